{{/* Chart name, truncated for label limits. */}}
{{- define "podlatency.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified object name prefix. */}}
{{- define "podlatency.fullname" -}}
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

{{/* Labels on every object. */}}
{{- define "podlatency.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "podlatency.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of the predictor pods. */}}
{{- define "podlatency.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podlatency.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: predictor
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "podlatency.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podlatency.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The predictor's device: podlatency.device, else cuda when a GPU is claimed. */}}
{{- define "podlatency.device" -}}
{{- if .Values.podlatency.device }}
{{- if and (eq .Values.podlatency.device "cuda") (not .Values.gpu.enabled) }}
{{- fail "podlatency.device=cuda needs a GPU: set gpu.enabled=true (or device cpu or auto)" }}
{{- end }}
{{- .Values.podlatency.device }}
{{- else }}
{{- ternary "cuda" "cpu" .Values.gpu.enabled }}
{{- end }}
{{- end }}

{{/* Image reference: the release workflow's v<appVersion>-<variant> tag unless image.tag is set. */}}
{{- define "podlatency.image" -}}
{{- $variant := .Values.image.variant | default (ternary "cuda" "cpu" .Values.gpu.enabled) }}
{{- $tag := .Values.image.tag | default (printf "v%s-%s" .Chart.AppVersion $variant) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Spread pods with these selector labels across topologySpread.topologyKey. */}}
{{- define "podlatency.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .root.Values.topologySpread.maxSkew }}
    topologyKey: {{ .root.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: {{ .root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- .selector | nindent 8 }}
{{- end }}
{{- end }}

{{/* The OTLP/HTTP endpoint traces go to, or nothing. */}}
{{- define "podlatency.otlpEndpoint" -}}
{{- if .Values.tracing.endpoint }}
{{- .Values.tracing.endpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://%s-jaeger:4318" (include "podlatency.fullname" .) }}
{{- end }}
{{- end }}

{{/* Restricted-profile security context of every container. */}}
{{- define "podlatency.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The ConfigMap that declares the model version every replica serves. */}}
{{- define "podlatency.rolloutConfigMap" -}}
{{- printf "%s-model" (include "podlatency.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the trainer pods. */}}
{{- define "podlatency.trainerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "podlatency.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: trainer
{{- end }}

{{/* Environment every pod taking part in the rollout needs: who and where it is. */}}
{{- define "podlatency.rolloutEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: PODLATENCY_POD_NAME
  value: $(POD_NAME)
- name: PODLATENCY_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: PODLATENCY_ROLLOUT_CONFIGMAP
  value: {{ include "podlatency.rolloutConfigMap" . }}
{{- end }}

{{/* Name of the Secret with the write routes' bearer token. */}}
{{- define "podlatency.tokenSecret" -}}
{{- default (printf "%s-api-token" (include "podlatency.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The bearer token, when write routes need one. */}}
{{- define "podlatency.tokenEnv" -}}
{{- if .Values.auth.enabled }}
- name: PODLATENCY_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "podlatency.tokenSecret" . }}
      key: {{ .Values.auth.secretKey }}
{{- end }}
{{- end }}

{{/* Drain before stopping: endpoints drop the pod while it still serves, then uvicorn finishes in-flight requests. */}}
{{- define "podlatency.lifecycle" -}}
{{- if gt (int .Values.shutdownDelaySeconds) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ .Values.shutdownDelaySeconds }}
{{- end }}
{{- end }}
