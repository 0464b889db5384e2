{{/*
mode node: the DaemonSet that runs the node agent (`pagewarm node`, issue 14). It keeps the
declared models warm in the node's page cache, exports the warm map on /metrics and, with
node.nfd.enabled, writes it to Node Feature Discovery's features.d so that NFD labels the
node `pagewarm.io/warm-<slug>=true` for each warm model (README "Node agent").
*/}}

{{- define "pagewarm.nodeConfigDir" -}}/etc/pagewarm{{- end }}

{{/* The agent's config file (NODE_CONTRACT.md): only the keys the agent reads. */}}
{{- define "pagewarm.nodeConfig" -}}
{{- $models := list }}
{{- range .Values.node.models }}
{{- $models = append $models (dict "name" (toString .name) "path" .path "priority" (default 0 .priority | int)) }}
{{- end }}
{{- toYaml (dict "models" $models) }}
{{- end }}

{{/* The bytes the agent is asked to keep warm: the declared models, or the models directory. */}}
{{- define "pagewarm.nodeModelsBytes" -}}
{{- $sum := 0 | int64 }}
{{- if .Values.node.models }}
{{- range .Values.node.models }}
{{- $sum = add $sum (include "pagewarm.bytes" .sizeBytes | int64) }}
{{- end }}
{{- else }}
{{- $sum = include "pagewarm.bytes" .Values.node.modelsDirSizeBytes | int64 }}
{{- end }}
{{- $sum }}
{{- end }}

{{/*
What the agent's memory limit must hold, in bytes (README "Memory"): the page cache it
keeps warm is charged to its own cgroup, so the limit holds the declared set, the reserve
its budget keeps free, and its own memory.
*/}}
{{- define "pagewarm.nodeRequiredMemory" -}}
{{- add (include "pagewarm.nodeModelsBytes" . | int64) (include "pagewarm.bytes" .Values.node.reserve | int64) (.Values.memory.headroomBytes | int64) }}
{{- end }}

{{/* The agent's resources: the given ones, with limits.memory computed when empty. */}}
{{- define "pagewarm.nodeResources" -}}
{{- $resources := deepCopy (default dict .Values.node.resources) }}
{{- $limits := default dict (get $resources "limits") }}
{{- if not (get $limits "memory") }}
{{- $_ := set $limits "memory" (include "pagewarm.mebibytes" (include "pagewarm.nodeRequiredMemory" .)) }}
{{- end }}
{{- $_ := set $resources "limits" $limits }}
{{- toYaml $resources }}
{{- end }}

{{/* The host paths of the declared models, each mounted read-only at the same path. */}}
{{- define "pagewarm.nodeModelMounts" -}}
{{- $mounts := list }}
{{- if .Values.node.models }}
{{- range $index, $model := .Values.node.models }}
{{- $mounts = append $mounts (dict "name" (printf "node-model-%d" $index) "mountPath" $model.path "readOnly" true "mountPropagation" $.Values.node.mountPropagation) }}
{{- end }}
{{- else }}
{{- $mounts = append $mounts (dict "name" "node-models" "mountPath" .Values.node.mountPath "readOnly" true "mountPropagation" .Values.node.mountPropagation) }}
{{- end }}
{{- toYaml $mounts }}
{{- end }}

{{- define "pagewarm.container.nodeAgent" -}}
{{- $node := .Values.node -}}
- name: pagewarm
  image: {{ include "pagewarm.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - node
    {{- if $node.models }}
    # Re-read when the ConfigMap changes (the kubelet swaps the mounted directory): a new
    # model list takes effect without a restart, so the pod carries no config checksum.
    - --config
    - {{ include "pagewarm.nodeConfigDir" . }}/models.yaml
    {{- else }}
    - --models-dir
    - {{ $node.mountPath | quote }}
    {{- end }}
    - --node-name
    - $(PAGEWARM_NODE_NAME)
    - --port
    - {{ .Values.pagewarm.port | int | quote }}
    - --interval
    - {{ $node.interval | toString | quote }}
    - --reserve
    - {{ include "pagewarm.bytes" $node.reserve | quote }}
    - --warm-threshold
    - {{ $node.warmThreshold | toString | quote }}
    {{- if $node.rateLimit }}
    - --rate-limit
    - {{ include "pagewarm.bytes" $node.rateLimit | quote }}
    {{- end }}
    {{- if $node.nfd.enabled }}
    - --nfd-features-dir
    - {{ $node.nfd.featuresDir | quote }}
    {{- end }}
    {{- with .Values.pagewarm.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "pagewarm.env" . | nindent 4 }}
  ports:
    {{- include "pagewarm.ports" . | nindent 4 }}
  readinessProbe:
    {{- include "pagewarm.healthzProbe" . | nindent 4 }}
    periodSeconds: 10
    timeoutSeconds: 5
  livenessProbe:
    {{- include "pagewarm.healthzProbe" . | nindent 4 }}
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 6
  resources:
    {{- include "pagewarm.nodeResources" . | nindent 4 }}
  securityContext:
    {{- include "pagewarm.securityContext" (dict "root" . "ipcLock" false) | nindent 4 }}
  volumeMounts:
    - name: pagewarm-state
      mountPath: {{ include "pagewarm.statePath" . }}
    {{- if $node.models }}
    - name: pagewarm-node-config
      mountPath: {{ include "pagewarm.nodeConfigDir" . }}
      readOnly: true
    {{- end }}
    {{- include "pagewarm.nodeModelMounts" . | nindent 4 }}
    {{- if $node.nfd.enabled }}
    # The only host directory the agent writes: its one feature file, for NFD's local source.
    - name: nfd-features
      mountPath: {{ $node.nfd.featuresDir | quote }}
    {{- end }}
    {{- with .Values.pagewarm.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* mode node: the DaemonSet's volumes, in the order of the agent's mounts. */}}
{{- define "pagewarm.nodeVolumes" -}}
{{- $node := .Values.node }}
{{- $volumes := list (merge (dict "name" "pagewarm-state") (deepCopy .Values.pagewarm.stateVolume)) }}
{{- if $node.models }}
{{- $volumes = append $volumes (dict "name" "pagewarm-node-config" "configMap" (dict "name" (printf "%s-node" (include "pagewarm.fullname" .)))) }}
{{- range $index, $model := $node.models }}
{{- $volumes = append $volumes (dict "name" (printf "node-model-%d" $index) "hostPath" (dict "path" $model.path "type" $node.hostPathType)) }}
{{- end }}
{{- else }}
{{- $volumes = append $volumes (dict "name" "node-models" "hostPath" (dict "path" $node.hostPath "type" $node.hostPathType)) }}
{{- end }}
{{- if $node.nfd.enabled }}
{{- $volumes = append $volumes (dict "name" "nfd-features" "hostPath" (dict "path" $node.nfd.featuresDir "type" "DirectoryOrCreate")) }}
{{- end }}
{{- toYaml $volumes }}
{{- end }}

{{/* Checks of node mode that the schema cannot express. */}}
{{- define "pagewarm.validateNode" -}}
{{- $v := .Values }}
{{- $node := $v.node }}
{{- $names := dict }}
{{- $paths := dict }}
{{- range $node.models }}
{{- $name := toString .name }}
{{- if hasKey $names $name }}
{{- fail (printf "node.models: the name %q is given twice; each model needs its own name (its metrics and its node label are keyed by it)" $name) }}
{{- end }}
{{- $_ := set $names $name true }}
{{- if hasKey $paths .path }}
{{- fail (printf "node.models: the path %s is given twice (models %q and %q); one model per path" .path (get $paths .path) $name) }}
{{- end }}
{{- $_ := set $paths .path $name }}
{{- end }}
{{- if and (not $node.models) (le (include "pagewarm.nodeModelsBytes" . | int64) 0) }}
{{- fail "node mode keeps models warm, and the page cache it fills is charged to the agent's own memory cgroup: its memory limit is computed from the models' sizes. Give node.models (each with name, path, priority and sizeBytes), or, to keep every model of node.hostPath warm, node.modelsDirSizeBytes (du -sbL <dir>)." }}
{{- end }}
{{- $limit := dig "limits" "memory" "" $node.resources }}
{{- if and $limit (not $v.memory.allowPartialPrewarm) }}
{{- $required := include "pagewarm.nodeRequiredMemory" . | int64 }}
{{- if lt (include "pagewarm.bytes" $limit | int64) $required }}
{{- fail (printf "node.resources.limits.memory %s cannot hold the models the agent keeps warm: the page cache it fills is charged to its own memory cgroup. The limit must be at least the models' sizes (%d) + node.reserve (%s) + memory.headroomBytes (%d) = %d bytes (%s). Raise the limit, leave it empty to have it computed, or set memory.allowPartialPrewarm=true to keep warm only what fits (higher priority first)." (toString $limit) (include "pagewarm.nodeModelsBytes" . | int64) (toString $node.reserve) ($v.memory.headroomBytes | int64) $required (include "pagewarm.mebibytes" $required)) }}
{{- end }}
{{- end }}
{{- if and $node.nfd.enabled (not (kindIs "invalid" $v.pagewarm.runAsUser)) (ne ($v.pagewarm.runAsUser | int64) 0) }}
{{- fail (printf "node.nfd.enabled: the agent writes its feature file into %s on the host, which NFD (and hostPath DirectoryOrCreate) own as root:root 0755; UID %d cannot create a file there. Set pagewarm.runAsUser=0 and pagewarm.runAsNonRoot=false: root that owns the directory, with every capability dropped but CAP_FOWNER (no CAP_DAC_OVERRIDE), README \"Node Feature Discovery\"." $node.nfd.featuresDir ($v.pagewarm.runAsUser | int64)) }}
{{- end }}
{{- end }}
