{{/*
The agent sidecar, as a strategic-merge patch for a StatefulSet or Deployment:
  kubectl -n NS patch statefulset NAME --patch-file patch.yaml
Containers and volumes merge by name, so the workload's own containers stay as they are.
Flags come from agent/src/service/mod.rs (`kanister-agent serve`) as environment variables; a
test checks each name still exists there. Secrets (token, TLS) are mounted from Secrets in the
workload's namespace, never inlined.
*/}}
{{- define "kanister.agentSidecar.container" -}}
{{- if not (or .Values.agent.token.secretName (and .Values.agent.tls.secretName .Values.agent.tls.clientCASecretName)) }}
{{- fail "agent: the sidecar refuses to serve without authentication: set agent.token.secretName, or agent.tls.secretName with agent.tls.clientCASecretName" }}
{{- end }}
name: {{ .Values.agent.containerName }}
image: {{ include "kanister.image" (list .Values.agent.image .) | quote }}
imagePullPolicy: {{ .Values.agent.image.pullPolicy }}
command: ["/usr/local/bin/kanister-agent"]
args: ["serve"]
env:
  - name: KANISTER_LISTEN
    value: "0.0.0.0:{{ .Values.agent.port }}"
  - name: KANISTER_METRICS_LISTEN
    value: "0.0.0.0:{{ .Values.agent.metricsPort }}"
  - name: KANISTER_MAX_OPERATIONS
    value: {{ .Values.agent.maxOperations | quote }}
  - name: KANISTER_MAX_QUEUED
    value: {{ .Values.agent.maxQueued | quote }}
  - name: KANISTER_LOG_FORMAT
    value: {{ .Values.agent.logFormat | quote }}
  {{- if .Values.agent.token.secretName }}
  - name: KANISTER_TOKEN_FILE
    value: /var/run/kanister/token/token
  {{- end }}
  {{- if .Values.agent.tls.secretName }}
  - name: KANISTER_TLS_CERT
    value: /var/run/kanister/tls/tls.crt
  - name: KANISTER_TLS_KEY
    value: /var/run/kanister/tls/tls.key
  {{- end }}
  {{- if .Values.agent.tls.clientCASecretName }}
  - name: KANISTER_TLS_CLIENT_CA
    value: /var/run/kanister/client-ca/ca.crt
  {{- end }}
  # Dump and restore commands run in this container: scratch space only under /tmp.
  - name: TMPDIR
    value: /tmp
  - name: HOME
    value: /tmp
ports:
  - name: agent-grpc
    containerPort: {{ .Values.agent.port }}
    protocol: TCP
  - name: agent-metrics
    containerPort: {{ .Values.agent.metricsPort }}
    protocol: TCP
# grpc.health.v1 answers without TLS or token, so the kubelet's gRPC probe works.
readinessProbe:
  grpc:
    port: {{ .Values.agent.port }}
    service: kanister.agent.v1.AgentService
  periodSeconds: 10
livenessProbe:
  httpGet:
    path: /healthz
    port: agent-metrics
  periodSeconds: 20
  failureThreshold: 3
resources:
  {{- toYaml .Values.agent.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.agent.securityContext | nindent 2 }}
volumeMounts:
  - name: kanister-agent-tmp
    mountPath: /tmp
  {{- if .Values.agent.token.secretName }}
  - name: kanister-agent-token
    mountPath: /var/run/kanister/token
    readOnly: true
  {{- end }}
  {{- if .Values.agent.tls.secretName }}
  - name: kanister-agent-tls
    mountPath: /var/run/kanister/tls
    readOnly: true
  {{- end }}
  {{- if .Values.agent.tls.clientCASecretName }}
  - name: kanister-agent-client-ca
    mountPath: /var/run/kanister/client-ca
    readOnly: true
  {{- end }}
{{- end }}

{{- define "kanister.agentSidecar.volumes" -}}
- name: kanister-agent-tmp
  emptyDir:
    sizeLimit: {{ .Values.agent.scratchSizeLimit }}
{{- if .Values.agent.token.secretName }}
- name: kanister-agent-token
  secret:
    secretName: {{ .Values.agent.token.secretName }}
    items:
      - key: {{ .Values.agent.token.key }}
        path: token
{{- end }}
{{- if .Values.agent.tls.secretName }}
- name: kanister-agent-tls
  secret:
    secretName: {{ .Values.agent.tls.secretName }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- if .Values.agent.tls.clientCASecretName }}
- name: kanister-agent-client-ca
  secret:
    secretName: {{ .Values.agent.tls.clientCASecretName }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}

{{- define "kanister.agentSidecar.patch" -}}
spec:
  template:
    spec:
      containers:
        - {{ include "kanister.agentSidecar.container" . | indent 10 | trim }}
      volumes:
        {{- include "kanister.agentSidecar.volumes" . | nindent 8 }}
{{- end }}
