{{/*
Checks of values that the schema cannot express. Each failure says what to change.
*/}}
{{- define "pagewarm.validate" -}}
{{- $v := .Values }}
{{- if eq $v.mode "monitoring" }}
{{- include "pagewarm.validateMonitoringMode" . }}
{{- else }}
{{- if and (not (kindIs "invalid" $v.pagewarm.runAsUser)) (eq ($v.pagewarm.runAsUser | int64) 0) $v.pagewarm.runAsNonRoot }}
{{- fail "pagewarm.runAsUser is 0 but pagewarm.runAsNonRoot is true: the kubelet would refuse to start the container. Set runAsNonRoot=false to run as root with CAP_FOWNER as the only capability, or pick a non-zero UID (README \"Truthful residency\")." }}
{{- end }}
{{- if and $v.monitoring.serviceMonitor.enabled (not $v.monitoring.service.enabled) }}
{{- fail "monitoring.serviceMonitor.enabled needs monitoring.service.enabled (the ServiceMonitor selects the metrics Service); or use monitoring.podMonitor instead." }}
{{- end }}
{{- include "pagewarm.validateImage" (dict "name" "image" "image" $v.image) }}
{{- if eq $v.mode "node" }}
{{- include "pagewarm.validateNode" . }}
{{- end }}
{{- include "pagewarm.validateStartupProfile" . }}
{{- if include "pagewarm.warms" . }}
{{- include "pagewarm.validateImage" (dict "name" "vllm.image" "image" $v.vllm.image) }}
{{- include "pagewarm.validateModel" . }}
{{- include "pagewarm.validateMemory" . }}
{{- include "pagewarm.validatePlacement" . }}
{{- if eq ($v.vllm.port | int) ($v.pagewarm.port | int) }}
{{- fail (printf "vllm.port and pagewarm.port are both %d: vLLM and pagewarm share the pod's network, and the second to bind the port would exit at once (a crash loop). Give them different ports." ($v.pagewarm.port | int)) }}
{{- end }}
{{- $pdb := $v.vllm.podDisruptionBudget }}
{{- if and $pdb.enabled (eq (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "vllm.podDisruptionBudget needs exactly one of minAvailable and maxUnavailable (the other null)." }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* mode monitoring renders the fleet-wide objects only; what else is asked for would be ignored. */}}
{{- define "pagewarm.validateMonitoringMode" -}}
{{- $v := .Values }}
{{- if not (or (include "pagewarm.rulesEnabled" .) (include "pagewarm.dashboardsEnabled" .)) }}
{{- fail "mode monitoring renders the PrometheusRule and the dashboards, and both are disabled: nothing to install. Leave monitoring.prometheusRule.enabled or monitoring.dashboards.enabled unset (or true)." }}
{{- end }}
{{- if or $v.monitoring.serviceMonitor.enabled $v.monitoring.podMonitor.enabled }}
{{- fail "mode monitoring renders only the PrometheusRule and the dashboards: enable monitoring.serviceMonitor or monitoring.podMonitor in the releases that run pagewarm (sidecar, init or node mode), which they select." }}
{{- end }}
{{- end }}

{{/* A tag of "latest" moves under a running Deployment; only a digest pins it then. */}}
{{- define "pagewarm.validateImage" -}}
{{- if and (eq (toString .image.tag) "latest") (not .image.digest) }}
{{- fail (printf "%s.tag is \"latest\", which names a different image whenever the registry gets a new one: pods of one Deployment would run different versions, and a restart would upgrade silently. Pin a version (e.g. %s.tag=v0.11.0), or pin %s.digest (sha256:...)." .name .name .name) }}
{{- end }}
{{- end }}

{{- define "pagewarm.validateModel" -}}
{{- $v := .Values }}
{{- $volume := $v.model.volume }}
{{- if not $v.model.path }}
{{- fail (printf "model.path is required in %s mode: the model's directory inside the containers, under model.volume.mountPath (%s), e.g. %s/Llama-3.1-8B-Instruct" $v.mode $volume.mountPath $volume.mountPath) }}
{{- end }}
{{- $mount := trimSuffix "/" $volume.mountPath }}
{{- if not (or (eq $v.model.path $mount) (hasPrefix (printf "%s/" $mount) $v.model.path)) }}
{{- fail (printf "model.path %s is not under model.volume.mountPath %s: pagewarm and vLLM see the model only through that volume" $v.model.path $volume.mountPath) }}
{{- end }}
{{- if le (include "pagewarm.modelBytes" . | int64) 0 }}
{{- fail (printf "model.sizeBytes is required in %s mode: the total size of the model's weight files in bytes (du -sbL <model dir>). The page cache a pre-warm fills is charged to the warming container's memory cgroup, so its memory limit is computed from this size (README \"Memory\")." $v.mode) }}
{{- end }}
{{- if and (eq $volume.type "persistentVolumeClaim") (not $volume.claimName) }}
{{- fail "model.volume.claimName is required with model.volume.type persistentVolumeClaim" }}
{{- end }}
{{- if and (eq $volume.type "hostPath") (not $volume.hostPath) }}
{{- fail "model.volume.hostPath is required with model.volume.type hostPath" }}
{{- end }}
{{- if and (eq $volume.type "existing") $v.vllm.enabled }}
{{- fail "model.volume.type existing names a volume of your own pod: it needs vllm.enabled=false (the snippet). With the chart's vLLM Deployment use persistentVolumeClaim, hostPath or emptyDir." }}
{{- end }}
{{- end }}

{{- define "pagewarm.validateMemory" -}}
{{- $v := .Values }}
{{- $limit := dig "limits" "memory" "" $v.pagewarm.resources }}
{{- if and $limit (not $v.memory.allowPartialPrewarm) }}
{{- $limitBytes := include "pagewarm.bytes" $limit | int64 }}
{{- $required := include "pagewarm.requiredMemory" . | int64 }}
{{- if lt $limitBytes $required }}
{{- $main := "" }}
{{- if and (eq $v.mode "init") $v.vllm.enabled }}
{{- $mainBytes := include "pagewarm.mainContainersMemory" . }}
{{- if ne $mainBytes "unlimited" }}
{{- $main = printf " + the memory limits of vLLM and vllm.extraContainers (%s: the init container's page cache stays charged to the pod after it exits)" $mainBytes }}
{{- end }}
{{- end }}
{{- fail (printf "pagewarm.resources.limits.memory %s (%d bytes) cannot hold the model. The page cache a pre-warm fills is charged to the memory cgroup of the container that reads it, and a container at its limit evicts its own pages as it reads. The limit must be at least model.sizeBytes (%d) + prewarm.reserveBytes (%d) + memory.headroomBytes (%d)%s = %d bytes (%s). Raise the limit, leave it empty to have it computed, or set memory.allowPartialPrewarm=true to warm only what fits." (toString $limit) $limitBytes (include "pagewarm.modelBytes" . | int64) ($v.prewarm.reserveBytes | int64) ($v.memory.headroomBytes | int64) $main $required (include "pagewarm.mebibytes" $required)) }}
{{- end }}
{{- end }}
{{- end }}
