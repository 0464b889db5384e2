{{/*
The snippet: a strategic-merge patch that adds pagewarm to a vLLM Deployment or StatefulSet
that the chart does not manage. Lists merge by name, so applying it twice changes nothing.
*/}}
{{- define "pagewarm.snippetPatch" -}}
# pagewarm {{ .Chart.AppVersion }} ({{ .Values.mode }} mode) for {{ .Values.model.path }}
# A strategic-merge patch for your vLLM Deployment or StatefulSet. Apply it with
#   kubectl patch deployment <your-vllm> --patch-file patch.yaml
# or list it under `patches:` in a kustomization.yaml, or paste its parts by hand:
#   - the labels under spec.template.metadata.labels (pagewarm.io/*: the metrics Service,
#     the PodMonitor and the NetworkPolicy select them; your selector's labels are not
#     touched),
#   - the init containers at the END of spec.template.spec.initContainers (after any
#     init container that fills the model volume; snippet.initContainersBefore names
#     them for the patch),
#   - the volumes under spec.template.spec.volumes.
{{- if eq .Values.model.volume.type "existing" }}
# The model volume "{{ .Values.model.volume.name }}" must exist in your pod already.
{{- end }}
# Memory: {{ if eq .Values.mode "init" }}the init container's page cache stays charged to the
# pod after it exits: give vLLM's container a memory limit that holds the model, or none{{ else }}the sidecar's memory limit below holds the model's page cache{{ end }}
# (README "Memory"). vLLM's startupProbe should allow a cold load of the whole model.
spec:
  template:
    metadata:
      labels:
        {{- include "pagewarm.podLabels" . | nindent 8 }}
    spec:
      {{- if include "pagewarm.sharesProcessNamespace" . }}
      shareProcessNamespace: true
      {{- end }}
      {{- with .Values.snippet.initContainersBefore }}
      # A strategic merge puts new init containers first: this order keeps yours first.
      $setElementOrder/initContainers:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
        {{- range include "pagewarm.initContainers" $ | fromYamlArray }}
        - name: {{ .name }}
        {{- end }}
      {{- end }}
      initContainers:
        {{- include "pagewarm.initContainers" . | nindent 8 }}
      {{- if include "vllm.logEnabled" . }}
      containers:
        - name: {{ .Values.vllm.containerName }}
          env:
            {{- include "vllm.logEnv" . | nindent 12 }}
          volumeMounts:
            {{- include "vllm.logMounts" . | nindent 12 }}
      {{- end }}
      volumes:
        {{- include "pagewarm.volumes" . | nindent 8 }}
{{- end }}
