{{/* The chart name, overridable. */}}
{{- define "kanister.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix: "<release>-kanister", or the release name when it contains the chart name. */}}
{{- define "kanister.fullname" -}}
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

{{/* The coordinator's resource name. */}}
{{- define "kanister.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "kanister.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "kanister.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kanister.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kanister
{{- end }}

{{/* Selector labels of the coordinator. */}}
{{- define "kanister.coordinator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kanister.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: coordinator
{{- end }}

{{/* The coordinator's ServiceAccount name. */}}
{{- define "kanister.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kanister.coordinator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: the digest wins over the tag. */}}
{{- define "kanister.image" -}}
{{- $image := index . 0 }}{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* Namespaces where ActionSets are watched: the release namespace first, then watchNamespaces. */}}
{{- define "kanister.watchNamespaces" -}}
{{- $all := list .Release.Namespace }}
{{- range .Values.watchNamespaces }}{{- if not (has . $all) }}{{- $all = append $all . }}{{- end }}{{- end }}
{{- join "," $all }}
{{- end }}

{{/*
Rules the coordinator needs where ActionSets live (derived from coordinator/src/controller.rs
and cluster/kube.rs):
- ActionSets: get/list/watch (controller, recovery); status: update (PUT .../status);
  finalizers: update, needed to set blockOwnerDeletion on task pods owned by an ActionSet.
- Blueprints, Profiles: get (read at each action's start). Secrets, ConfigMaps: get (a
  Profile's credentials, the ActionSet's secrets/configMaps). Secrets: create, for the
  repository key kept per Profile (engine/repokey.rs), the store credentials of agent task
  pods (engine/data.rs) and the Profile credential of task pods whose arguments render
  `toJson .Profile` (engine/functions.rs), both named after their contents; existing Secrets
  are never changed.
- events.k8s.io Events: create, patch (kube-runtime's Recorder).
- Pods: task pods (KubeTask defaults to the ActionSet's namespace) are created, watched (the
  controller owns them), read, deleted; their logs read.
- With the gRPC API on (service.grpc.enabled; api/service.rs), for kanctl: ActionSets create,
  patch (cancel), delete; Profiles create (with their Secret: create, as above; a Secret is
  never deleted, a failed creation names the one it left).
*/}}
{{- define "kanister.rules.controller" -}}
- apiGroups: ["cr.kanister.io"]
  resources: ["actionsets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["cr.kanister.io"]
  resources: ["actionsets/status"]
  verbs: ["update"]
- apiGroups: ["cr.kanister.io"]
  resources: ["actionsets/finalizers"]
  verbs: ["update"]
- apiGroups: ["cr.kanister.io"]
  resources: ["blueprints"]
  verbs: ["get"]
- apiGroups: ["cr.kanister.io"]
  resources: ["profiles"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch", "list"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
{{- include "kanister.rules.api" . }}
{{- end }}

{{/*
The cluster-scoped kinds the CSI snapshot functions use (rbac.csiSnapshots): a static
snapshot's VolumeSnapshotContent (create, delete), its VolumeSnapshotClass (get).
*/}}
{{- define "kanister.rules.csiCluster" -}}
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshotcontents"]
  verbs: ["get", "create", "delete"]
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshotclasses"]
  verbs: ["get"]
{{- end }}

{{/* The leader Lease (leader.rs), in the release namespace only. */}}
{{- define "kanister.rules.lease" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{/* Rules of the gRPC API (kanctl), where ActionSets live and where workloads live. */}}
{{- define "kanister.rules.api" -}}
{{- if .Values.service.grpc.enabled }}
- apiGroups: ["cr.kanister.io"]
  resources: ["actionsets"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["cr.kanister.io"]
  resources: ["profiles"]
  verbs: ["create"]
{{- end }}
{{- end }}

{{/*
Rules the coordinator needs where the workloads live (derived from engine/params.rs,
engine/functions.rs and cluster/kube.rs):
- the action's object: StatefulSets/Deployments get (and their pods list), PVCs get;
- ScaleWorkload: get the workload, patch its scale subresource, watch it until ready (a watch
  of one object is a list and a watch with a name field selector);
- task pods: watched until started and until their containers end;
- with rbac.csiSnapshots, the CSI snapshot functions (engine/csi.rs): VolumeSnapshots
  get/create/delete, PVCs create (RestoreCSISnapshot); the cluster-scoped kinds are in
  kanister.rules.csiCluster;
- KubeExec/KubeExecAll: pods/exec (create for websocket upgrades since Kubernetes 1.31, get
  before);
- KubeTask and the data functions: task pods create/get/delete, logs;
- Profiles (e.g. mysql-test/s3-profile) and the Secrets/ConfigMaps the ActionSet names: get;
- scheduled maintenance (engine/maintenance.rs): Profiles list, events about them create/patch;
- with the gRPC API on: `kanctl create profile` (Profiles create) and
  `kanctl create actionset --selector` (Deployments, StatefulSets, PVCs list).
*/}}
{{- define "kanister.rules.target" -}}
- apiGroups: ["apps"]
  resources: ["statefulsets", "deployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["statefulsets/scale", "deployments/scale"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["pods/exec"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["configmaps", "persistentvolumeclaims"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
- apiGroups: ["cr.kanister.io"]
  resources: ["profiles"]
  verbs: ["get", "list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.service.grpc.enabled }}
- apiGroups: ["cr.kanister.io"]
  resources: ["profiles"]
  verbs: ["create"]
- apiGroups: ["apps"]
  resources: ["statefulsets", "deployments"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list"]
{{- end }}
{{- if .Values.rbac.csiSnapshots }}
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshots"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["create"]
{{- end }}
{{- if .Values.rbac.openshift }}
- apiGroups: ["apps.openshift.io"]
  resources: ["deploymentconfigs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps.openshift.io"]
  resources: ["deploymentconfigs/scale"]
  verbs: ["patch"]
{{- end }}
{{- with .Values.rbac.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Whether the coordinator mounts a Secret for its agent client (token, CA, client certificate):
non-empty when it does.
*/}}
{{- define "kanister.coordinator.agentSecrets" -}}
{{- if or .Values.agent.token.secretName .Values.coordinator.agentClient.caSecretName .Values.coordinator.agentClient.clientCertSecretName (include "kanister.coordinator.apiToken" .) -}}
true
{{- end -}}
{{- end }}

{{/* The Secret holding the token kanctl must send to the coordinator's API, when it is served. */}}
{{- define "kanister.coordinator.apiToken" -}}
{{- if .Values.service.grpc.enabled -}}
{{- required "service.grpc.token.secretName: the API needs a token Secret (kanctl sends its token)" .Values.service.grpc.token.secretName -}}
{{- end -}}
{{- end }}
