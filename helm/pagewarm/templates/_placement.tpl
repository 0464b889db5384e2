{{/*
Placement on warm nodes (issue 14). The node agent labels a node
`pagewarm.io/warm-<slug>=true` (through Node Feature Discovery) for each model it holds warm;
the chart's Deployment prefers those nodes, never requires them: a cold node must still run
the pod.
*/}}

{{/*
The slug of a model name, exactly as NODE_CONTRACT.md (and controller/node/labels.py) form
it: lowercase; every run of characters outside [a-z0-9._-] becomes "-"; characters outside
[a-z0-9] stripped from both ends; when "warm-<slug>" would pass the 63 characters of a
label name, the slug is cut to 49 characters and given "-" and the first 8 hex digits of
the name's sha256. Empty when the name has no letter or digit.
*/}}
{{- define "pagewarm.warmSlug" -}}
{{- $name := toString . }}
{{- /* Python's str.lower() maps U+0130 (İ) to "i" and a combining dot, Go's to "i": the one
letter whose full and simple lowercase differ. */}}
{{- $slug := regexReplaceAll "[^a-z0-9._-]+" (lower (replace "\u0130" "i\u0307" $name)) "-" }}
{{- $slug = regexReplaceAll "^[^a-z0-9]+|[^a-z0-9]+$" $slug "" }}
{{- if gt (len (printf "warm-%s" $slug)) 63 }}
{{- $slug = printf "%s-%s" (substr 0 49 $slug) (sha256sum $name | trunc 8) }}
{{- end }}
{{- $slug }}
{{- end }}

{{/* The node label of a warm model: placement.labelPrefix + "warm-" + slug; call with (dict "root" $ "name" <model name>). */}}
{{- define "pagewarm.warmLabelKey" -}}
{{- printf "%swarm-%s" .root.Values.placement.labelPrefix (include "pagewarm.warmSlug" .name) }}
{{- end }}

{{/* Whether the Deployment prefers warm nodes: placement.preferWarmNodes, null meaning "when a label prefix is set". */}}
{{- define "pagewarm.prefersWarmNodes" -}}
{{- $placement := .Values.placement }}
{{- if and (include "pagewarm.warms" .) .Values.vllm.enabled }}
{{- if kindIs "invalid" $placement.preferWarmNodes }}
{{- if $placement.labelPrefix }}true{{ end }}
{{- else if $placement.preferWarmNodes }}true{{ end }}
{{- end }}
{{- end }}

{{/*
pod.affinity, with (when the Deployment prefers warm nodes) one more preferred node affinity
term on the model's warm label. The user's own terms are kept; nothing is required.
*/}}
{{- define "pagewarm.affinity" -}}
{{- $affinity := deepCopy (default dict .Values.pod.affinity) }}
{{- if include "pagewarm.prefersWarmNodes" . }}
{{- $nodeAffinity := default dict (get $affinity "nodeAffinity") }}
{{- $preferred := default list (get $nodeAffinity "preferredDuringSchedulingIgnoredDuringExecution") }}
{{- $key := include "pagewarm.warmLabelKey" (dict "root" . "name" (include "pagewarm.modelName" .)) }}
{{- $term := dict "weight" (.Values.placement.weight | int) "preference" (dict "matchExpressions" (list (dict "key" $key "operator" "In" "values" (list "true")))) }}
{{- $_ := set $nodeAffinity "preferredDuringSchedulingIgnoredDuringExecution" (append $preferred $term) }}
{{- $_ := set $affinity "nodeAffinity" $nodeAffinity }}
{{- end }}
{{- with $affinity }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Checks of placement that the schema cannot express. */}}
{{- define "pagewarm.validatePlacement" -}}
{{- $placement := .Values.placement }}
{{- if and $placement.preferWarmNodes (not $placement.labelPrefix) }}
{{- fail "placement.preferWarmNodes is true but placement.labelPrefix is empty: the warm label is <labelPrefix>warm-<model>, the prefix the node agent's labels carry (pagewarm.io/ by default). Set the prefix, or leave preferWarmNodes null." }}
{{- end }}
{{- if and (include "pagewarm.prefersWarmNodes" .) (not (include "pagewarm.warmSlug" (include "pagewarm.modelName" .))) }}
{{- fail (printf "placement.preferWarmNodes: the model name %q has no letter or digit, so no node label can name it; set model.name, or placement.preferWarmNodes=false" (include "pagewarm.modelName" .)) }}
{{- end }}
{{- end }}
