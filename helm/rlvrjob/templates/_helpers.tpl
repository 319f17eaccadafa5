{{- define "rlvrjob.name" -}}
{{- .Values.name | default .Release.Name -}}
{{- end -}}
