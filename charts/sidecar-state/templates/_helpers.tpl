{{/* Names: the usual helpers (63 characters, DNS-1123). */}}
{{- define "sidecar-state.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sidecar-state.fullname" -}}
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

{{- define "sidecar-state.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "sidecar-state.labels" -}}
helm.sh/chart: {{ include "sidecar-state.chart" . }}
{{ include "sidecar-state.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sidecar-state
{{- end }}

{{- define "sidecar-state.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidecar-state.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per role: "webhook" or "controller" (call with (dict "root" $ "role" "webhook")). */}}
{{- define "sidecar-state.roleName" -}}
{{- printf "%s-%s" (include "sidecar-state.fullname" .root | trunc 52 | trimSuffix "-") .role }}
{{- end }}

{{- define "sidecar-state.roleSelectorLabels" -}}
{{ include "sidecar-state.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "sidecar-state.roleLabels" -}}
{{ include "sidecar-state.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{/* The webhook Service, both webhook configurations and the TLS Secret. */}}
{{- define "sidecar-state.webhookService" -}}
{{- include "sidecar-state.roleName" (dict "root" . "role" "webhook") }}
{{- end }}

{{- define "sidecar-state.webhookConfiguration" -}}
{{- include "sidecar-state.fullname" . }}
{{- end }}

{{- define "sidecar-state.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "sidecar-state.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}

{{- define "sidecar-state.certificate" -}}
{{- printf "%s-webhook" (include "sidecar-state.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* Images: the tag defaults to appVersion. */}}
{{- define "sidecar-state.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag | toString) }}
{{- end }}

{{/* The namespaces the mutating webhook never sees; the same list (sorted, unique) as
sidecar_operator.webhook_config.namespace_selector builds, and as the operator excludes. */}}
{{- define "sidecar-state.excludedNamespaces" -}}
{{- $all := concat (list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace) .Values.excludedNamespaces }}
{{- toJson (sortAlpha (uniq $all)) }}
{{- end }}

{{/* The operator's TLS files (a Secret volume with cert-manager, an emptyDir otherwise). */}}
{{- define "sidecar-state.tlsDir" -}}
/var/run/sidecar-state/webhook-tls
{{- end }}

{{/* Environment of both roles: the defaults every injection starts from (settings.py). */}}
{{- define "sidecar-state.commonEnv" -}}
- name: SIDECAR_STATE_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: SIDECAR_STATE_REDIS_IMAGE
  value: {{ printf "%s:%s" .Values.images.redis.repository (required "images.redis.tag is required: the store server's own version, never the chart's appVersion" .Values.images.redis.tag | toString) | quote }}
- name: SIDECAR_STATE_HYDRATOR_IMAGE
  value: {{ include "sidecar-state.image" (dict "root" . "image" .Values.images.hydrator) | quote }}
- name: SIDECAR_STATE_ENVOY_IMAGE
  value: {{ include "sidecar-state.image" (dict "root" . "image" .Values.images.envoy) | quote }}
- name: SIDECAR_STATE_IMAGE_PULL_POLICY
  value: {{ .Values.images.sidecarPullPolicy | quote }}
- name: SIDECAR_STATE_IMAGE_PULL_SECRETS
  value: {{ join "," .Values.images.sidecarPullSecrets | quote }}
- name: SIDECAR_STATE_BOOTSTRAP_SERVERS
  value: {{ join "," .Values.kafka.bootstrapServers | quote }}
- name: SIDECAR_STATE_NATS_SERVERS
  value: {{ join "," .Values.nats.servers | quote }}
- name: SIDECAR_STATE_MAX_MEMORY
  value: {{ .Values.sidecars.maxMemory | quote }}
- name: SIDECAR_STATE_SIDECAR_MODE
  value: {{ .Values.sidecars.mode | quote }}
- name: SIDECAR_STATE_EXCLUDED_NAMESPACES
  value: {{ join "," .Values.excludedNamespaces | quote }}
- name: SIDECAR_STATE_HEALTH_PORT
  value: {{ .Values.healthPort | quote }}
- name: SIDECAR_STATE_ALLOWED_BOOTSTRAP_SERVERS
  value: {{ join "," .Values.kafka.allowedBootstrapServers | quote }}
- name: SIDECAR_STATE_ALLOWED_NATS_SERVERS
  value: {{ join "," .Values.nats.allowedServers | quote }}
- name: SIDECAR_STATE_WATCH_NAMESPACES
  value: {{ join "," .Values.watchNamespaces | quote }}
- name: SIDECAR_STATE_USER_IDS
  value: {{ .Values.sidecars.userIds | quote }}
- name: SIDECAR_STATE_METRICS_PORT
  value: {{ .Values.sidecars.metricsPort | quote }}
- name: SIDECAR_STATE_HYDRATION_TIMEOUT_SECONDS
  value: {{ .Values.sidecars.hydrationTimeoutSeconds | quote }}
{{- with .Values.sidecars.resources }}
- name: SIDECAR_STATE_HYDRATOR_CPU_REQUEST
  value: {{ .hydrator.requests.cpu | quote }}
- name: SIDECAR_STATE_HYDRATOR_CPU_LIMIT
  value: {{ .hydrator.limits.cpu | quote }}
- name: SIDECAR_STATE_HYDRATOR_MEMORY_REQUEST
  value: {{ .hydrator.requests.memory | quote }}
- name: SIDECAR_STATE_HYDRATOR_MEMORY_LIMIT
  value: {{ .hydrator.limits.memory | quote }}
- name: SIDECAR_STATE_REDIS_CPU_REQUEST
  value: {{ .redis.requests.cpu | quote }}
- name: SIDECAR_STATE_REDIS_CPU_LIMIT
  value: {{ (.redis.limits | default dict).cpu | default "" | quote }}
{{- end }}
- name: SIDECAR_STATE_PROMETHEUS_ANNOTATIONS
  value: {{ .Values.monitoring.prometheusAnnotations | quote }}
- name: SIDECAR_STATE_NETWORK_POLICIES
  value: {{ .Values.interceptor.networkPolicies | quote }}
- name: SIDECAR_STATE_ISTIO_PROVIDER
  value: {{ .Values.interceptor.istio.provider | quote }}
- name: SIDECAR_STATE_ISTIO_AUTHORIZER_PORT
  value: {{ .Values.interceptor.istio.authorizerPort | quote }}
{{- end }}

{{/* prometheus.io annotations of the operator's Pods (monitoring.prometheusAnnotations). */}}
{{- define "sidecar-state.prometheusAnnotations" -}}
{{- if .Values.monitoring.prometheusAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.healthPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* Probes of both roles, on the health server of handlers/lifecycle.py. */}}
{{- define "sidecar-state.probes" -}}
livenessProbe:
  httpGet: {path: /livez, port: health}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: health}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
startupProbe:
  httpGet: {path: /livez, port: health}
  periodSeconds: 2
  failureThreshold: 60
{{- end }}
