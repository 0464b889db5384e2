{{/*
What the ServiceMonitor and the PodMonitor share; call with the monitor's values.
*/}}

{{/* Spec fields of both kinds: the job's name, pod labels to keep, node metadata, the limit.
Call with (dict "monitor" $monitor "mode" .Values.mode). */}}
{{- define "pagewarm.monitorCommon" -}}
{{- $mode := .mode }}
{{- with .monitor }}
{{- with .jobLabel }}
jobLabel: {{ . }}
{{- end }}
{{- with .podTargetLabels }}
podTargetLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .attachMetadata.node }}
attachMetadata:
  node: true
{{- end }}
{{- $limit := .sampleLimit }}
{{- if kindIs "invalid" $limit }}
{{- /* README "Series per node and sampleLimit": 40 + 12 x models; a node's cache holds
many models, a sidecar's or init container's exporter one. */}}
{{- $limit = ternary 20000 2000 (eq $mode "node") }}
{{- end }}
{{- if gt ($limit | int64) 0 }}
sampleLimit: {{ $limit | int64 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The endpoint: path, timing, and the relabeling that gives every series the `node` it was
scraped on (residency, schedulers and memory are facts about a node). It reads the pod's
node name from service discovery, which both kinds see for pod-backed targets; the
exporter itself never sets `node`.
*/}}
{{- define "pagewarm.monitorEndpoint" -}}
path: /metrics
interval: {{ .interval }}
scrapeTimeout: {{ .scrapeTimeout }}
honorLabels: {{ .honorLabels }}
relabelings:
  - action: replace
    sourceLabels:
      - __meta_kubernetes_pod_node_name
    targetLabel: node
  {{- with .relabelings }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
