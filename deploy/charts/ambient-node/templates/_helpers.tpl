{{/* Labels every object carries. */}}
{{- define "ambient.labels" -}}
app.kubernetes.io/part-of: ambient-node
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{/* The one image, by digest when one is given. */}}
{{- define "ambient.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the CA. */}}
{{- define "ambient.caSecret" -}}
{{ .Values.controlPlane.ca.existingSecret | default .Values.controlPlane.ca.generatedSecretName }}
{{- end -}}

{{/* The control plane's in-cluster address. */}}
{{- define "ambient.controlPlaneAddress" -}}
ambient-controlplane.{{ .Release.Namespace }}.svc:15012
{{- end -}}
