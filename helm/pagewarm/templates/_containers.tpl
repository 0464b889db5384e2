{{/*
The containers and volumes of the pod. The Deployment, the DaemonSet and the snippet
(vllm.enabled false) all render pagewarm's containers from here, so they cannot drift apart.
*/}}

{{/*
Hardened securityContext, with pagewarm.securityContext merged over it (what the user sets
wins); call with (dict "root" $ "ipcLock" bool "ptrace" bool). A null runAsUser/runAsGroup is left out
(platforms such as OpenShift's restricted SCC assign one).
*/}}
{{- define "pagewarm.securityContext" -}}
{{- $values := .root.Values.pagewarm }}
{{- $add := list }}
{{- if $values.fowner }}
{{- $add = append $add "FOWNER" }}
{{- end }}
{{- if .ipcLock }}
{{- $add = append $add "IPC_LOCK" }}
{{- end }}
{{- if .ptrace }}
{{- $add = append $add "SYS_PTRACE" }}
{{- end }}
{{- $capabilities := dict "drop" (list "ALL") }}
{{- with $add }}
{{- $_ := set $capabilities "add" . }}
{{- end }}
{{- $context := dict
  "runAsNonRoot" $values.runAsNonRoot
  "readOnlyRootFilesystem" true
  "allowPrivilegeEscalation" false
  "privileged" false
  "seccompProfile" (dict "type" "RuntimeDefault")
  "capabilities" $capabilities }}
{{- if not (kindIs "invalid" $values.runAsUser) }}
{{- $_ := set $context "runAsUser" ($values.runAsUser | int64) }}
{{- end }}
{{- if not (kindIs "invalid" $values.runAsGroup) }}
{{- $_ := set $context "runAsGroup" ($values.runAsGroup | int64) }}
{{- end }}
{{- toYaml (mergeOverwrite $context (deepCopy (default dict $values.securityContext))) }}
{{- end }}

{{- define "pagewarm.env" -}}
- name: PAGEWARM_SAMPLES
  value: {{ include "pagewarm.statePath" . }}/samples.jsonl
- name: PAGEWARM_LOG_FORMAT
  value: json
- name: PAGEWARM_LOG_LEVEL
  value: {{ .Values.pagewarm.logLevel | quote }}
- name: PAGEWARM_RESIDENCY_METHOD
  value: {{ .Values.pagewarm.residencyMethod | quote }}
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
# The node this pod runs on, for pagewarm's own use (the node agent); Prometheus labels the
# series with `node` from the scrape target, never from the exporter.
- name: PAGEWARM_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- if not (kindIs "invalid" .Values.pagewarm.perFileSeries) }}
- name: PAGEWARM_PER_FILE_SERIES
  value: {{ ternary "true" "false" .Values.pagewarm.perFileSeries | quote }}
{{- end }}
{{- with .Values.pagewarm.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "pagewarm.ports" -}}
- name: metrics
  containerPort: {{ .Values.pagewarm.port | int }}
  protocol: TCP
{{- end }}

{{- define "pagewarm.healthzProbe" -}}
httpGet:
  path: /healthz
  port: metrics
{{- end }}

{{/* The mounts of the model volume and the state volume, as pagewarm sees them (read-only model). */}}
{{- define "pagewarm.modelMounts" -}}
- name: pagewarm-state
  mountPath: {{ include "pagewarm.statePath" . }}
- name: {{ .Values.model.volume.name }}
  mountPath: {{ .Values.model.volume.mountPath | quote }}
  {{- with .Values.model.volume.subPath }}
  subPath: {{ . | quote }}
  {{- end }}
  readOnly: true
{{- with .Values.pagewarm.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The flags every pre-warming command takes (add_prewarm_options in controller/commands/prewarm.py). */}}
{{- define "pagewarm.prewarmArgs" -}}
- --strategy
- {{ .Values.prewarm.strategy }}
- --threads
- {{ .Values.prewarm.threads | int | quote }}
- --reserve
- {{ .Values.prewarm.reserveBytes | int64 | quote }}
{{- if gt (.Values.prewarm.rateLimitBytesPerSecond | int64) 0 }}
- --rate-limit
- {{ .Values.prewarm.rateLimitBytesPerSecond | int64 | quote }}
{{- end }}
{{- if not .Values.prewarm.memoryGuard }}
- --no-memory-guard
{{- end }}
{{- end }}

{{/* mode sidecar: the native sidecar that warms, gates vLLM, times it and serves metrics */}}
{{- define "pagewarm.container.sidecar" -}}
- name: pagewarm
  image: {{ include "pagewarm.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  # A native sidecar: the kubelet starts vLLM only once this container's startupProbe passed.
  restartPolicy: Always
  args:
    - sidecar
    - {{ include "pagewarm.warmPath" . | quote }}
    - --gate
    - {{ .Values.sidecar.gate | quote }}
    - --gate-timeout
    - {{ .Values.sidecar.gateTimeoutSeconds | int | quote }}
    - --vllm-url
    - {{ include "pagewarm.vllmHealthUrl" . | quote }}
    - --load-timeout
    - {{ include "pagewarm.loadTimeoutSeconds" . | quote }}
    - --port
    - {{ .Values.pagewarm.port | int | quote }}
    - --model-name
    - {{ include "pagewarm.modelName" . | quote }}
    {{- if .Values.sidecar.keepWarm }}
    - --keep-warm
    {{- end }}
    {{- if .Values.sidecar.mlock }}
    - --mlock
    {{- end }}
    {{- if .Values.sidecar.vllmLog.enabled }}
    - --vllm-log
    - {{ .Values.sidecar.vllmLog.path | quote }}
    {{- end }}
    {{- include "pagewarm.prewarmArgs" . | nindent 4 }}
    {{- with .Values.pagewarm.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "pagewarm.env" . | nindent 4 }}
    {{- if include "pagewarm.startupProfileEnabled" . }}
    {{- include "pagewarm.startupProfileEnv" . | nindent 4 }}
    {{- end }}
  ports:
    {{- include "pagewarm.ports" . | nindent 4 }}
  # Passes once the gate is open (weights resident, or the gate's policy or timeout says so).
  startupProbe:
    httpGet:
      path: /startup
      port: metrics
    periodSeconds: {{ .Values.sidecar.startupProbe.periodSeconds | int }}
    timeoutSeconds: {{ .Values.sidecar.startupProbe.timeoutSeconds | int }}
    failureThreshold: {{ include "pagewarm.startupFailureThreshold" . }}
  livenessProbe:
    {{- include "pagewarm.healthzProbe" . | nindent 4 }}
    periodSeconds: {{ .Values.sidecar.livenessProbe.periodSeconds | int }}
    timeoutSeconds: {{ .Values.sidecar.livenessProbe.timeoutSeconds | int }}
    failureThreshold: {{ .Values.sidecar.livenessProbe.failureThreshold | int }}
  resources:
    {{- include "pagewarm.warmerResources" . | nindent 4 }}
  securityContext:
    {{- include "pagewarm.securityContext" (dict "root" . "ipcLock" .Values.sidecar.mlock "ptrace" (include "pagewarm.startupProfileEnabled" .)) | nindent 4 }}
  volumeMounts:
    {{- include "pagewarm.modelMounts" . | nindent 4 }}
    {{- if .Values.sidecar.vllmLog.enabled }}
    - name: pagewarm-vllm-log
      mountPath: {{ dir .Values.sidecar.vllmLog.path | quote }}
      readOnly: true
    {{- end }}
    {{- with include "pagewarm.startupProfileMounts" . }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* mode init: the classic init container that warms and exits */}}
{{- define "pagewarm.container.init" -}}
- name: pagewarm
  image: {{ include "pagewarm.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - init
    - {{ include "pagewarm.warmPath" . | quote }}
    - --model-name
    - {{ include "pagewarm.modelName" . | quote }}
    {{- include "pagewarm.prewarmArgs" . | nindent 4 }}
    {{- with .Values.pagewarm.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "pagewarm.env" . | nindent 4 }}
  resources:
    {{- include "pagewarm.warmerResources" . | nindent 4 }}
  securityContext:
    {{- include "pagewarm.securityContext" (dict "root" . "ipcLock" false) | nindent 4 }}
  volumeMounts:
    {{- include "pagewarm.modelMounts" . | nindent 4 }}
{{- end }}

{{/* mode init: the exporter for the one model, as a native sidecar listed before the init container */}}
{{- define "pagewarm.container.modelExporter" -}}
- name: pagewarm-exporter
  image: {{ include "pagewarm.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  restartPolicy: Always
  args:
    - exporter
    - --model-path
    - {{ include "pagewarm.warmPath" . | quote }}
    - --port
    - {{ .Values.pagewarm.port | int | quote }}
    - --model-name
    - {{ include "pagewarm.modelName" . | quote }}
    {{- with .Values.pagewarm.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "pagewarm.env" . | nindent 4 }}
  ports:
    {{- include "pagewarm.ports" . | nindent 4 }}
  livenessProbe:
    {{- include "pagewarm.healthzProbe" . | nindent 4 }}
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 6
  resources:
    {{- toYaml .Values.init.exporter.resources | nindent 4 }}
  securityContext:
    {{- include "pagewarm.securityContext" (dict "root" . "ipcLock" false) | nindent 4 }}
  volumeMounts:
    {{- include "pagewarm.modelMounts" . | nindent 4 }}
{{- end }}

{{/* pagewarm's init containers (sidecar or init mode), in the order the kubelet runs them */}}
{{- define "pagewarm.initContainers" -}}
{{- if eq .Values.mode "sidecar" -}}
{{ include "pagewarm.container.sidecar" . }}
{{- else -}}
{{- if .Values.init.exporter.enabled -}}
{{ include "pagewarm.container.modelExporter" . }}
{{ end -}}
{{ include "pagewarm.container.init" . }}
{{- end }}
{{- end }}

{{/* What the vLLM container needs so that pagewarm can read its log (sidecar.vllmLog) */}}
{{- define "vllm.logEnv" -}}
- name: VLLM_CONFIGURE_LOGGING
  value: "1"
- name: VLLM_LOGGING_CONFIG_PATH
  value: {{ include "pagewarm.vllmLoggingConfigDir" . }}/logging.json
{{- end }}

{{- define "vllm.logMounts" -}}
- name: pagewarm-vllm-log
  mountPath: {{ dir .Values.sidecar.vllmLog.path | quote }}
- name: pagewarm-vllm-logging
  mountPath: {{ include "pagewarm.vllmLoggingConfigDir" . }}
  readOnly: true
{{- end }}

{{- define "vllm.logEnabled" -}}
{{- if and (eq .Values.mode "sidecar") .Values.sidecar.vllmLog.enabled }}true{{ end }}
{{- end }}

{{- define "pagewarm.container.vllm" -}}
- name: {{ .Values.vllm.containerName }}
  image: {{ include "vllm.image" . }}
  imagePullPolicy: {{ .Values.vllm.image.pullPolicy }}
  {{- with .Values.vllm.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $hfRepo := include "pagewarm.hfRepoId" . }}
  args:
    {{- if .Values.vllm.args }}
    {{- toYaml .Values.vllm.args | nindent 4 }}
    {{- else }}
    {{- if $hfRepo }}
    # A Hugging Face cache entry: vLLM resolves org/name to a snapshot in HF_HUB_CACHE.
    - {{ $hfRepo | quote }}
    {{- with .Values.model.revision }}
    - --revision
    - {{ . | quote }}
    {{- end }}
    {{- else }}
    - {{ .Values.model.path | quote }}
    {{- end }}
    - --served-model-name
    - {{ include "pagewarm.modelName" . | quote }}
    - --host
    - 0.0.0.0
    - --port
    - {{ .Values.vllm.port | int | quote }}
    {{- with .Values.vllm.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
  {{- $hfEnv := and $hfRepo (not .Values.vllm.args) }}
  {{- if or .Values.vllm.env (include "vllm.logEnabled" .) $hfEnv }}
  env:
    {{- if $hfEnv }}
    - name: HF_HUB_CACHE
      value: {{ dir (trimSuffix "/" .Values.model.path) | quote }}
    # The weights are on a read-only volume: never try the Hub.
    - name: HF_HUB_OFFLINE
      value: "1"
    {{- end }}
    {{- with .Values.vllm.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- if include "vllm.logEnabled" . }}
    {{- include "vllm.logEnv" . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with .Values.vllm.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.vllm.port | int }}
      protocol: TCP
  # vLLM answers /health with 200 only once its engine is up (weights loaded).
  startupProbe:
    httpGet:
      path: /health
      port: http
    periodSeconds: {{ .Values.vllm.startupProbe.periodSeconds | int }}
    timeoutSeconds: {{ .Values.vllm.startupProbe.timeoutSeconds | int }}
    failureThreshold: {{ .Values.vllm.startupProbe.failureThreshold | int }}
  readinessProbe:
    httpGet:
      path: /health
      port: http
    periodSeconds: {{ .Values.vllm.readinessProbe.periodSeconds | int }}
    timeoutSeconds: {{ .Values.vllm.readinessProbe.timeoutSeconds | int }}
    failureThreshold: {{ .Values.vllm.readinessProbe.failureThreshold | int }}
  {{- if .Values.vllm.livenessProbe.enabled }}
  livenessProbe:
    httpGet:
      path: /health
      port: http
    periodSeconds: {{ .Values.vllm.livenessProbe.periodSeconds | int }}
    timeoutSeconds: {{ .Values.vllm.livenessProbe.timeoutSeconds | int }}
    failureThreshold: {{ .Values.vllm.livenessProbe.failureThreshold | int }}
  {{- end }}
  {{- with .Values.vllm.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.vllm.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: {{ .Values.model.volume.name }}
      mountPath: {{ .Values.model.volume.mountPath | quote }}
      {{- with .Values.model.volume.subPath }}
      subPath: {{ . | quote }}
      {{- end }}
      readOnly: {{ .Values.vllm.modelReadOnly }}
    {{- if .Values.vllm.shmSizeLimit }}
    - name: dshm
      mountPath: /dev/shm
    {{- end }}
    {{- if include "vllm.logEnabled" . }}
    {{- include "vllm.logMounts" . | nindent 4 }}
    {{- end }}
    {{- with .Values.vllm.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The volumes pagewarm brings (the model's unless it is `existing`, the state, vLLM's log) */}}
{{- define "pagewarm.volumes" -}}
{{- $volume := .Values.model.volume }}
{{- $volumes := list }}
{{- if eq $volume.type "persistentVolumeClaim" }}
{{- $claim := dict "claimName" $volume.claimName }}
{{- if .Values.vllm.modelReadOnly }}
{{- $_ := set $claim "readOnly" true }}
{{- end }}
{{- $volumes = append $volumes (dict "name" $volume.name "persistentVolumeClaim" $claim) }}
{{- else if eq $volume.type "hostPath" }}
{{- $volumes = append $volumes (dict "name" $volume.name "hostPath" (dict "path" $volume.hostPath "type" $volume.hostPathType)) }}
{{- else if eq $volume.type "emptyDir" }}
{{- $emptyDir := dict }}
{{- with $volume.emptyDirSizeLimit }}
{{- $_ := set $emptyDir "sizeLimit" . }}
{{- end }}
{{- $volumes = append $volumes (dict "name" $volume.name "emptyDir" $emptyDir) }}
{{- end }}
{{- $volumes = append $volumes (merge (dict "name" "pagewarm-state") (deepCopy .Values.pagewarm.stateVolume)) }}
{{- if include "vllm.logEnabled" . }}
{{- $volumes = append $volumes (dict "name" "pagewarm-vllm-log" "emptyDir" (dict "sizeLimit" "64Mi")) }}
{{- $volumes = append $volumes (dict "name" "pagewarm-vllm-logging" "configMap" (dict "name" (printf "%s-vllm-logging" (include "pagewarm.fullname" .)))) }}
{{- end }}
{{- $volumes = concat $volumes (include "pagewarm.startupProfileVolumes" . | fromYamlArray) }}
{{- toYaml $volumes }}
{{- end }}
