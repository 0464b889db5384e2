{{/*
Names, labels, images and the arithmetic of memory limits. The containers are in
_containers.tpl, the checks that stop a bad release in _validate.tpl.
*/}}

{{- define "pagewarm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pagewarm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The name of the metrics Service and of the PodMonitor: Prometheus makes it the job label,
and the rules' PagewarmExporterDown selects jobs that contain "pagewarm".
*/}}
{{- define "pagewarm.metricsName" -}}
{{- $full := include "pagewarm.fullname" . }}
{{- if contains "pagewarm" $full }}
{{- printf "%s-metrics" ($full | trunc 55 | trimSuffix "-") }}
{{- else }}
{{- printf "%s-pagewarm-metrics" ($full | trunc 46 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{- define "pagewarm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The selector of the chart's own Deployment and DaemonSet (immutable once created). */}}
{{- define "pagewarm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pagewarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The labels every pod pagewarm runs in carries, the snippet's included: the metrics Service,
the PodMonitor and the NetworkPolicy select pods on pagewarm.io/instance, never on
app.kubernetes.io/*, which a host chart's own selector may use (a patch that changed them
would no longer match that selector). The value is the full name: unique per release and
per subchart alias. pagewarm.io/job is the job name the monitors' jobLabel reads.
*/}}
{{- define "pagewarm.podSelectorLabels" -}}
pagewarm.io/instance: {{ include "pagewarm.fullname" . }}
{{- end }}

{{- define "pagewarm.podLabels" -}}
{{ include "pagewarm.podSelectorLabels" . }}
pagewarm.io/job: pagewarm
{{- end }}

{{/* The recommended app.kubernetes.io labels; call with (dict "root" $ "component" "...") */}}
{{- define "pagewarm.labels" -}}
{{- $root := .root -}}
helm.sh/chart: {{ include "pagewarm.chart" $root }}
{{ include "pagewarm.selectorLabels" $root }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: pagewarm
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "pagewarm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pagewarm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
[registry/]repository:tag, ...:tag@digest or ...@digest; call with (dict "root" $ "image"
an image dict "defaultTag" a tag). global.imageRegistry (a mirror) wins over image.registry.
*/}}
{{- define "pagewarm.imageRef" -}}
{{- $global := default dict .root.Values.global }}
{{- $registry := default .image.registry $global.imageRegistry }}
{{- $repository := .image.repository }}
{{- if $registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}
{{- end }}
{{- $tag := default .defaultTag .image.tag }}
{{- if .image.digest }}
{{- if $tag }}
{{- printf "%s:%s@%s" $repository $tag .image.digest }}
{{- else }}
{{- printf "%s@%s" $repository .image.digest }}
{{- end }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{- define "pagewarm.image" -}}
{{- include "pagewarm.imageRef" (dict "root" . "image" .Values.image "defaultTag" .Chart.AppVersion) }}
{{- end }}

{{- define "vllm.image" -}}
{{- include "pagewarm.imageRef" (dict "root" . "image" .Values.vllm.image "defaultTag" "") }}
{{- end }}

{{/* imagePullSecrets of the pod: the chart's and the umbrella's (global). */}}
{{- define "pagewarm.imagePullSecrets" -}}
{{- $global := default dict .Values.global }}
{{- $secrets := concat (default list .Values.imagePullSecrets) (default list $global.imagePullSecrets) | uniq }}
{{- with $secrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Whether this release pre-warms a model (sidecar and init modes). */}}
{{- define "pagewarm.warms" -}}
{{- if has .Values.mode (list "sidecar" "init") }}true{{ end }}
{{- end }}

{{/* Whether this release runs pagewarm somewhere (every mode but monitoring). */}}
{{- define "pagewarm.runs" -}}
{{- if ne .Values.mode "monitoring" }}true{{ end }}
{{- end }}

{{/*
The fleet-wide objects: on by default only in mode monitoring (one release per cluster);
an explicit true or false wins. Call with (dict "root" $ "enabled" <the value>).
*/}}
{{- define "pagewarm.fleetWide" -}}
{{- if kindIs "invalid" .enabled }}
{{- if eq .root.Values.mode "monitoring" }}true{{ end }}
{{- else if .enabled }}true{{ end }}
{{- end }}

{{- define "pagewarm.rulesEnabled" -}}
{{- include "pagewarm.fleetWide" (dict "root" . "enabled" .Values.monitoring.prometheusRule.enabled) }}
{{- end }}

{{- define "pagewarm.dashboardsEnabled" -}}
{{- include "pagewarm.fleetWide" (dict "root" . "enabled" .Values.monitoring.dashboards.enabled) }}
{{- end }}

{{/* model.sizeBytes in bytes (it may be a quantity such as 16Gi). */}}
{{- define "pagewarm.modelBytes" -}}
{{- include "pagewarm.bytes" .Values.model.sizeBytes }}
{{- end }}

{{/*
A Hugging Face cache entry (<cache>/models--org--name): its repository id ("org/name"),
else nothing. vLLM is then given the id with HF_HUB_CACHE=<cache> and HF_HUB_OFFLINE=1, and
Hugging Face's own resolver picks the snapshot (refs/main, or model.revision): the entry's
directory itself has no config.json.
*/}}
{{- define "pagewarm.hfRepoId" -}}
{{- $base := base (trimSuffix "/" .Values.model.path) }}
{{- if and (hasPrefix "models--" $base) (gt (len $base) 8) }}
{{- trimPrefix "models--" $base | replace "--" "/" }}
{{- end }}
{{- end }}

{{/*
The model's name, the `model` label of the metrics and the name vLLM serves it under:
model.name, else what pagewarm itself would derive (exporter/weightset.py
model_name_for_path: org/name of a cache entry, else the last part of the path).
*/}}
{{- define "pagewarm.modelName" -}}
{{- $entries := regexFindAll "(models|datasets)--[^/]+" .Values.model.path -1 }}
{{- if .Values.model.name }}{{ .Values.model.name }}
{{- else if $entries }}{{ regexReplaceAll "^(models|datasets)--" (last $entries) "" | replace "--" "/" }}
{{- else }}{{ default "model" (base (trimSuffix "/" .Values.model.path) | trimSuffix ".safetensors") }}
{{- end }}
{{- end }}

{{/* What pagewarm warms and watches: model.path, or the pinned snapshot of a cache entry. */}}
{{- define "pagewarm.warmPath" -}}
{{- if and (include "pagewarm.hfRepoId" .) .Values.model.revision }}
{{- printf "%s/snapshots/%s" (trimSuffix "/" .Values.model.path) .Values.model.revision }}
{{- else }}
{{- .Values.model.path }}
{{- end }}
{{- end }}

{{/*
A Kubernetes quantity (512Mi, 16G, 1.5Gi, 17179869184) as an integer number of bytes.
Values parsed from YAML arrive as float64, --set values as int64 or string: all are taken.
*/}}
{{- define "pagewarm.bytes" -}}
{{- $value := . }}
{{- if or (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) }}
{{- $value | int64 }}
{{- else }}
{{- $text := toString $value | trim }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $text }}
{{- $suffix := trimPrefix $number $text }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 }}
{{- if or (not $number) (not (hasKey $units $suffix)) }}
{{- fail (printf "%q is not a memory quantity pagewarm understands (examples: 512Mi, 16Gi, 20G, 17179869184)" $text) }}
{{- end }}
{{- mulf $number (get $units $suffix) | ceil | int64 }}
{{- end }}
{{- end }}

{{/* Bytes as MiB, rounded up: the form the chart writes limits in. */}}
{{- define "pagewarm.mebibytes" -}}
{{- $bytes := . | int64 }}
{{- printf "%dMi" (div (add $bytes 1048575) 1048576) }}
{{- end }}

{{/*
The memory limits of the containers that run next to the model after an init container
has warmed it: vLLM and vllm.extraContainers. Their sum, in bytes; "unlimited" when one of
them has no memory limit (the pod then has no pod-level memory limit either).
*/}}
{{- define "pagewarm.mainContainersMemory" -}}
{{- $containers := list (dict "name" "vllm" "resources" .Values.vllm.resources) }}
{{- range .Values.vllm.extraContainers }}
{{- $containers = append $containers (dict "name" .name "resources" (default dict .resources)) }}
{{- end }}
{{- $sum := 0 | int64 }}
{{- $unlimited := false }}
{{- range $containers }}
{{- $limit := dig "limits" "memory" "" .resources }}
{{- if $limit }}
{{- $sum = add $sum (include "pagewarm.bytes" $limit | int64) }}
{{- else }}
{{- $unlimited = true }}
{{- end }}
{{- end }}
{{- if $unlimited }}unlimited{{ else }}{{ $sum }}{{ end }}
{{- end }}

{{/*
What the warming container's memory limit must hold, in bytes (README "Memory"):
the model's page cache, the reserve the memory guard keeps free, pagewarm's own memory,
and in init mode also what vLLM may use, because the init container's page cache stays
charged to the pod after it exits.
*/}}
{{- define "pagewarm.requiredMemory" -}}
{{- $required := add (include "pagewarm.modelBytes" . | int64) (.Values.prewarm.reserveBytes | int64) (.Values.memory.headroomBytes | int64) }}
{{- if and (eq .Values.mode "init") .Values.vllm.enabled }}
{{- $main := include "pagewarm.mainContainersMemory" . }}
{{- if ne $main "unlimited" }}
{{- $required = add $required ($main | int64) }}
{{- end }}
{{- end }}
{{- $required }}
{{- end }}

{{/* The warming container's resources: the given ones, with limits.memory computed when empty. */}}
{{- define "pagewarm.warmerResources" -}}
{{- $resources := deepCopy (default dict .Values.pagewarm.resources) }}
{{- $limits := default dict (get $resources "limits") }}
{{- if not (get $limits "memory") }}
{{- $_ := set $limits "memory" (include "pagewarm.mebibytes" (include "pagewarm.requiredMemory" .)) }}
{{- end }}
{{- $_ := set $resources "limits" $limits }}
{{- toYaml $resources }}
{{- end }}

{{- define "pagewarm.vllmHealthUrl" -}}
{{- default (printf "http://127.0.0.1:%d/health" (.Values.vllm.port | int)) .Values.sidecar.vllmHealthUrl }}
{{- end }}

{{/* A vLLM start still not healthy when the kubelet would give up on it (vLLM's startupProbe) is a timed-out load. */}}
{{- define "pagewarm.loadTimeoutSeconds" -}}
{{- if gt (.Values.sidecar.loadTimeoutSeconds | int) 0 }}
{{- .Values.sidecar.loadTimeoutSeconds | int }}
{{- else }}
{{- mul (.Values.vllm.startupProbe.periodSeconds | int) (.Values.vllm.startupProbe.failureThreshold | int) }}
{{- end }}
{{- end }}

{{/*
Seconds a rollout may go without progress: the chart's own budgets, so that `kubectl rollout
status` and Argo CD do not call a pod failed while it may still legitimately be starting
(README "Rollouts"): 600 s for scheduling and image pulls (Kubernetes' own default for the
whole rollout), the warm's allowance (the sidecar's startupProbe budget; an init container
has no timeout: the same allowance, or the rate-limited read of the whole model if longer),
vLLM's startupProbe budget, and the readiness probe's failures before the pod counts.
*/}}
{{- define "pagewarm.progressDeadlineSeconds" -}}
{{- if not (kindIs "invalid" .Values.vllm.progressDeadlineSeconds) }}
{{- .Values.vllm.progressDeadlineSeconds | int }}
{{- else }}
{{- $startup := .Values.sidecar.startupProbe }}
{{- $warm := mul (include "pagewarm.startupFailureThreshold" . | int) ($startup.periodSeconds | int) }}
{{- $rate := .Values.prewarm.rateLimitBytesPerSecond | int64 }}
{{- if and (eq .Values.mode "init") (gt $rate 0) }}
{{- $warm = max $warm (div (add (include "pagewarm.modelBytes" . | int64) $rate -1) $rate) }}
{{- end }}
{{- $vllm := mul (.Values.vllm.startupProbe.periodSeconds | int) (.Values.vllm.startupProbe.failureThreshold | int) }}
{{- $ready := mul (.Values.vllm.readinessProbe.periodSeconds | int) (.Values.vllm.readinessProbe.failureThreshold | int) }}
{{- add 600 $warm $vllm $ready }}
{{- end }}
{{- end }}

{{/* The startupProbe gives up only after the sidecar's own gate timeout has opened the gate. */}}
{{- define "pagewarm.startupFailureThreshold" -}}
{{- $period := .Values.sidecar.startupProbe.periodSeconds | int }}
{{- $budget := add (.Values.sidecar.gateTimeoutSeconds | int) (.Values.sidecar.startupProbe.graceSeconds | int) }}
{{- div (add $budget $period -1) $period }}
{{- end }}

{{- define "pagewarm.statePath" -}}/var/lib/pagewarm{{- end }}
{{- define "pagewarm.vllmLoggingConfigDir" -}}/etc/pagewarm/vllm{{- end }}

{{/* The pod fields the Deployment and the DaemonSet share. */}}
{{- define "pagewarm.podSpec" -}}
serviceAccountName: {{ include "pagewarm.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.pod.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "pagewarm.imagePullSecrets" . }}
{{- with .Values.pod.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.pod.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with include "pagewarm.affinity" . }}
affinity:
  {{- . | nindent 2 }}
{{- end }}
{{- with .Values.pod.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.pod.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.pod.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .Values.pod.schedulerName }}
schedulerName: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ .Values.pod.terminationGracePeriodSeconds | int }}
{{- end }}
