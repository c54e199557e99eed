{{/* Names ------------------------------------------------------------------------------ */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.fullname" -}}
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

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end }}

{{/* Herald edge pods */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* Bundled NATS pods */}}
{{/* At most 50 characters: StatefulSet pod names get "-N" and a controller-revision-hash label
     (limit 63 with the hash), and the headless Service appends "-headless". */}}
{{- define "herald.nats.fullname" -}}
{{- printf "%s-nats" (include "herald.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{- define "herald.nats.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}-nats
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end }}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "herald.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Broker ----------------------------------------------------------------------------- */}}
{{/* "nats" with the bundled cluster or an external URL, else "memory". */}}
{{- define "herald.broker" -}}
{{- if or .Values.nats.enabled .Values.externalNats.url }}nats{{ else }}memory{{ end }}
{{- end }}

{{/* Client URL of the bundled NATS Service. */}}
{{- define "herald.nats.url" -}}
{{- printf "nats://%s.%s.svc.%s:4222" (include "herald.nats.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "herald.natsUrl" -}}
{{- if .Values.nats.enabled }}{{ include "herald.nats.url" . }}{{ else }}{{ .Values.externalNats.url }}{{ end }}
{{- end }}

{{- define "herald.natsReplicas" -}}
{{- if not (kindIs "invalid" .Values.config.natsReplicas) }}
{{- .Values.config.natsReplicas }}
{{- else if and .Values.nats.enabled (ge (int .Values.nats.replicas) 3) }}3
{{- else }}1
{{- end }}
{{- end }}

{{/* Grace period: explicit, or preStop + drain + 10 s. */}}
{{- define "herald.terminationGracePeriodSeconds" -}}
{{- $min := add .Values.drain.preStopSleepSeconds .Values.drain.timeoutSeconds }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $min 10 }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Cross-field checks values.schema.json cannot express; any failure stops rendering. */}}
{{- define "herald.validate" -}}
{{- $min := add .Values.drain.preStopSleepSeconds .Values.drain.timeoutSeconds }}
{{- $grace := include "herald.terminationGracePeriodSeconds" . | int }}
{{- if le $grace (int $min) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed drain.preStopSleepSeconds + drain.timeoutSeconds (%d): Kubernetes would kill pods before they finish draining" $grace (int $min)) }}
{{- end }}
{{- if eq (include "herald.broker" .) "memory" }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "the memory broker is single-node: with nats.enabled=false and no externalNats.url, set replicaCount=1 and autoscaling.enabled=false (or use NATS)" }}
{{- end }}
{{- end }}
{{- if and .Values.nats.enabled .Values.externalNats.url }}
{{- fail "choose one broker: nats.enabled=true (bundled) or externalNats.url (set nats.enabled=false)" }}
{{- end }}
{{- if and .Values.nats.enabled (gt (int (include "herald.natsReplicas" .)) (int .Values.nats.replicas)) }}
{{- fail (printf "config.natsReplicas (%s) cannot exceed nats.replicas (%d)" (include "herald.natsReplicas" .) (int .Values.nats.replicas)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and (not .Values.apiKeys.existingSecret) (not .Values.apiKeys.generate) (not .Values.apiKeys.insecure) }}
{{- fail "apiKeys.generate=false without apiKeys.existingSecret leaves the gRPC API (publish, drain) without a key: give apiKeys.existingSecret, or set apiKeys.insecure=true to serve it without keys" }}
{{- end }}
{{- if and .Values.apiKeys.insecure (or .Values.apiKeys.existingSecret .Values.apiKeys.generate) }}
{{- fail "apiKeys.insecure=true only applies without keys: also set apiKeys.generate=false and leave apiKeys.existingSecret empty" }}
{{- end }}
{{- if le (int .Values.config.outboxBytes) (add (int .Values.config.maxMessageBytes) 256) }}
{{- fail "config.outboxBytes must exceed config.maxMessageBytes + 256: one message must fit a client's queue" }}
{{- end }}
{{- end }}

{{/* The Secret holding the gRPC API keys file: the operator's, or the generated one; empty when
the API runs without keys (apiKeys.insecure). */}}
{{- define "herald.apiKeysSecret" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{ .Values.apiKeys.existingSecret }}
{{- else if .Values.apiKeys.generate -}}
{{ include "herald.fullname" . }}-api-keys
{{- end -}}
{{- end }}

{{/* The key in that Secret. */}}
{{- define "herald.apiKeysKey" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{ .Values.apiKeys.secretKey }}
{{- else -}}
api-keys
{{- end -}}
{{- end }}

{{/* herald.toml for HERALD_CONFIG: the channel namespaces. */}}
{{- define "herald.configFile" -}}
# Rendered by the Helm chart from .Values.namespaces (docs/security.md, "Channel namespaces").
{{- range $name, $ns := .Values.namespaces }}

[namespaces.{{ $name | quote }}]
{{- if hasKey $ns "anonymous" }}
anonymous = {{ $ns.anonymous }}
{{- end }}
{{- if hasKey $ns "historySize" }}
history_size = {{ $ns.historySize | int64 }}
{{- end }}
{{- if hasKey $ns "historyTtl" }}
history_ttl = {{ $ns.historyTtl | quote }}
{{- end }}
{{- end }}
{{ end }}
