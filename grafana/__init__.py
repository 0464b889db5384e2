"""pagewarm's Grafana dashboards, as code.

The JSON files beside this package are generated from it and committed (the Helm chart
and Grafana's provisioning read the JSON):

    python -m grafana.generate          # rewrite grafana/*.json
    python -m grafana.generate --check  # exit 1 when a committed file is out of date
    python -m grafana.lint grafana/*.json

``panels`` holds what every panel shares (datasource, variables, units, descriptions),
one module per dashboard builds its panels, ``lint`` checks the result in the spirit of
grafana/dashboard-linter.
"""
