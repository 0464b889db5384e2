{{/*
The sidecar's start-up profile (issue 15): vLLM's start (its libraries, shared objects,
configuration) recorded once and replayed ahead of vLLM, through /proc/<vLLM's pid>/root.
That needs vLLM's process in the sidecar's view (shareProcessNamespace) and ptrace read
access to it (CAP_SYS_PTRACE): both only when sidecar.startupProfile.enabled, never by
default (README "Start-up profile").
*/}}

{{- define "pagewarm.startupProfileEnabled" -}}
{{- if and (eq .Values.mode "sidecar") .Values.sidecar.startupProfile.enabled }}true{{ end }}
{{- end }}

{{/* Whether the pod shares one process namespace: asked for, or needed by the profile. */}}
{{- define "pagewarm.sharesProcessNamespace" -}}
{{- if or .Values.pod.shareProcessNamespace (include "pagewarm.startupProfileEnabled" .) }}true{{ end }}
{{- end }}

{{/* The sidecar's settings of the profile (controller/sidecar/settings.py). */}}
{{- define "pagewarm.startupProfileEnv" -}}
{{- $profile := .Values.sidecar.startupProfile }}
- name: PAGEWARM_STARTUP_PROFILE
  value: {{ $profile.path | quote }}
# The engine part of the profile's key: a new vLLM image records a new profile.
- name: PAGEWARM_ENGINE_IMAGE
  value: {{ include "vllm.image" . | quote }}
- name: PAGEWARM_STARTUP_PROFILE_RECORD
  value: {{ ternary "true" "false" $profile.record | quote }}
- name: PAGEWARM_STARTUP_PROFILE_IO_DEPTH
  value: {{ $profile.ioDepth | int | quote }}
{{- end }}

{{/* The volume that keeps the profiles across pods (none: they live in the state volume). */}}
{{- define "pagewarm.startupProfileVolumes" -}}
{{- $profile := .Values.sidecar.startupProfile }}
{{- if include "pagewarm.startupProfileEnabled" . }}
{{- if $profile.persistentVolumeClaim }}
- name: pagewarm-startup-profiles
  persistentVolumeClaim:
    claimName: {{ $profile.persistentVolumeClaim }}
    {{- if not $profile.record }}
    readOnly: true
    {{- end }}
{{- else if $profile.configMap }}
- name: pagewarm-startup-profiles
  configMap:
    name: {{ $profile.configMap }}
{{- end }}
{{- end }}
{{- end }}

{{/* Mounted at the profile's path; written only while recording is on. */}}
{{- define "pagewarm.startupProfileMounts" -}}
{{- $profile := .Values.sidecar.startupProfile }}
{{- if and (include "pagewarm.startupProfileEnabled" .) (or $profile.persistentVolumeClaim $profile.configMap) }}
- name: pagewarm-startup-profiles
  mountPath: {{ $profile.path | quote }}
  readOnly: {{ not $profile.record }}
{{- end }}
{{- end }}

{{- define "pagewarm.validateStartupProfile" -}}
{{- $v := .Values }}
{{- $profile := $v.sidecar.startupProfile }}
{{- if $profile.enabled }}
{{- if ne $v.mode "sidecar" }}
{{- fail (printf "sidecar.startupProfile.enabled needs mode sidecar (this release is mode %s): only the native sidecar runs beside vLLM's start and can replay its profile." $v.mode) }}
{{- end }}
{{- if and $profile.persistentVolumeClaim $profile.configMap }}
{{- fail "sidecar.startupProfile: give persistentVolumeClaim or configMap, not both: the profiles are read from one directory." }}
{{- end }}
{{- if and $profile.configMap $profile.record }}
{{- fail "sidecar.startupProfile.configMap is mounted read-only, so nothing can be recorded into it: set sidecar.startupProfile.record=false (record with a persistentVolumeClaim, or `pagewarm profile record`, then put the file into the ConfigMap)." }}
{{- end }}
{{- if not (or $profile.persistentVolumeClaim $profile.configMap (hasPrefix (printf "%s/" (include "pagewarm.statePath" .)) $profile.path)) }}
{{- fail (printf "sidecar.startupProfile.path %s is on no volume: give sidecar.startupProfile.persistentVolumeClaim or configMap (mounted there), or a path under %s (the pod's state volume: a profile recorded there lasts as long as the pod)." $profile.path (include "pagewarm.statePath" .)) }}
{{- end }}
{{- $pagewarmUid := $v.pagewarm.runAsUser }}
{{- $vllmUid := dig "runAsUser" nil (default dict $v.vllm.securityContext) }}
{{- if and $v.vllm.enabled (not (kindIs "invalid" $pagewarmUid)) (ne ($pagewarmUid | int64) 0) }}
{{- if or (kindIs "invalid" $vllmUid) (ne ($vllmUid | int64) ($pagewarmUid | int64)) }}
{{- fail (printf "sidecar.startupProfile reads vLLM's files through /proc/<pid>/root, which the kernel allows only with ptrace read access: the same UID as vLLM, or root with CAP_SYS_PTRACE (Kubernetes makes an added capability effective only for UID 0). pagewarm runs as UID %d and vLLM as %s. Set vllm.securityContext.runAsUser=%d (vLLM's image then runs as that user), or pagewarm.runAsUser=0 and pagewarm.runAsNonRoot=false (README \"Start-up profile\")." ($pagewarmUid | int64) (ternary "its image's user (root for vllm/vllm-openai)" (toString $vllmUid) (kindIs "invalid" $vllmUid)) ($pagewarmUid | int64)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
