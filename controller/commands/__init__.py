"""The subcommands of ``pagewarm``: one module each (``register`` its parser, ``run`` it),
imported only when the command line names it (``controller.cli``). A command parses its
flags, calls the domain modules and prints; the work itself lives below it."""
