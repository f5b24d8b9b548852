{{- define "sluice.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: sluice-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sluice
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The rules the operator needs on namespaced objects, wherever it watches. */}}
{{- define "sluice.namespacedRules" -}}
- apiGroups: ["sluice.dev"]
  resources: ["dataapis", "apiroles"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["sluice.dev"]
  resources: ["dataapis/status", "apiroles/status"]
  verbs: ["get", "patch"]
# Children carry owner references with blockOwnerDeletion, which clusters enforcing
# OwnerReferencesPermissionEnforcement (OpenShift) allow only to who may update the owner's finalizers.
- apiGroups: ["sluice.dev"]
  resources: ["dataapis/finalizers", "apiroles/finalizers"]
  verbs: ["update"]
# Config Secrets are applied, generated key Secrets created once and deleted when revoked; DSN
# and key Secrets are read (once per version); every Secret is watched, metadata only.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Children are watched, never read one by one: the reconciles read the watch's store.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
