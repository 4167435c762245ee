{{/* The chart name. */}}
{{- define "cairn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: <release>-cairn, or the release name when it
already contains the chart name. */}}
{{- define "cairn.fullname" -}}
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

{{- define "cairn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. Call with (dict "root" $ "component" "tracker"). */}}
{{- define "cairn.labels" -}}
helm.sh/chart: {{ include "cairn.chart" .root }}
{{ include "cairn.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: cairn
{{- end }}

{{- define "cairn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cairn.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cairn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "cairn.secretName" -}}
{{- if .Values.secrets.create }}
{{- printf "%s-secrets" (include "cairn.fullname" .) }}
{{- else }}
{{- default (printf "%s-secrets" (include "cairn.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}
{{- end }}

{{- define "cairn.configName" -}}
{{- printf "%s-config" (include "cairn.fullname" .) }}
{{- end }}

{{/* Where a component's Service is reached: <fullname>-<component>. */}}
{{- define "cairn.serviceName" -}}
{{- printf "%s-%s" (include "cairn.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The database URL the chart writes into its Secret. */}}
{{- define "cairn.databaseUrl" -}}
{{- if .Values.secrets.databaseUrl }}
{{- .Values.secrets.databaseUrl }}
{{- else if .Values.postgresql.enabled }}
{{- printf "postgresql+psycopg://%s:%s@%s:5432/%s" .Values.postgresql.username (.Values.postgresql.password | urlquery) (include "cairn.serviceName" (dict "root" . "component" "postgresql")) .Values.postgresql.database }}
{{- else }}
{{- required "secrets.databaseUrl is required (or postgresql.enabled=true)" .Values.secrets.databaseUrl }}
{{- end }}
{{- end }}

{{/* The sensitive settings, read from the Secret. (dict "root" $ "database" true) */}}
{{- define "cairn.secretEnv" -}}
{{- $secret := include "cairn.secretName" .root }}
{{- if .database }}
- name: CAIRN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: CAIRN_DATABASE_URL
{{- end }}
- name: CAIRN_AUTH_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: CAIRN_AUTH_TOKENS
- name: CAIRN_RUN_TOKEN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: CAIRN_RUN_TOKEN_SECRET
- name: CAIRN_PAGE_TOKEN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: CAIRN_PAGE_TOKEN_SECRET
{{- end }}

{{/* A Deployment and its Service. (dict "root" $ "component" "tracker" "values" .Values.tracker
"grpc" true "database" true "serviceAccount" "name"), optionally "automountToken" true,
"serviceType" "LoadBalancer", "strategy" (a DeploymentStrategy dict), "strategyComment" and
"replicasComment" (one-line comments in the rendered spec). */}}
{{- define "cairn.deployment" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $labels := dict "root" $root "component" .component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "cairn.serviceName" $labels }}
  labels:
    {{- include "cairn.labels" $labels | nindent 4 }}
spec:
  {{- if .replicasComment }}
  # {{ .replicasComment }}
  {{- end }}
  {{- if not (and $v.autoscaling $v.autoscaling.enabled) }}
  replicas: {{ $v.replicas }}
  {{- end }}
  {{- with .strategy }}
  {{- if $.strategyComment }}
  # {{ $.strategyComment }}
  {{- end }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "cairn.selectorLabels" $labels | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "cairn.labels" $labels | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- if $root.Values.secrets.create }}
        checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: {{ .automountToken | default false }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ add $root.Values.drainDelaySeconds $root.Values.shutdownGraceSeconds 10 }}
      containers:
        - name: {{ .component }}
          image: {{ .image | default (include "cairn.image" $root) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["serve", {{ .component | quote }}]
          envFrom:
            - configMapRef:
                name: {{ include "cairn.configName" $root }}
          env:
            {{- include "cairn.secretEnv" (dict "root" $root "database" .database) | nindent 12 }}
            {{- with $root.Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            {{- if .grpc }}
            - name: grpc
              containerPort: {{ $v.port }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $v.metricsPort }}
              protocol: TCP
            {{- else }}
            - name: http
              containerPort: {{ $v.port }}
              protocol: TCP
            {{- end }}
          {{- if .grpc }}
          startupProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 2
            failureThreshold: 30
          readinessProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 5
            failureThreshold: 2
          livenessProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 3
          {{- else }}
          # /healthz is 200 when every backend is SERVING (503 while draining or when one is
          # down): readiness takes the gateway out of rotation; liveness tolerates a backend
          # outage for a while before it restarts the gateway.
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 2
            failureThreshold: 30
          readinessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 5
            failureThreshold: 2
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 6
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: data
              mountPath: /var/lib/cairn
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.scratchSizeLimit }}
        - name: data
          emptyDir:
            sizeLimit: {{ $root.Values.scratchSizeLimit }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "cairn.serviceName" $labels }}
  labels:
    {{- include "cairn.labels" $labels | nindent 4 }}
spec:
  type: {{ .serviceType | default "ClusterIP" }}
  selector:
    {{- include "cairn.selectorLabels" $labels | nindent 4 }}
  ports:
    {{- if .grpc }}
    - name: grpc
      port: {{ $v.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ $v.metricsPort }}
      targetPort: metrics
      protocol: TCP
    {{- else }}
    - name: http
      port: {{ $v.port }}
      targetPort: http
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end }}

{{/* A HorizontalPodAutoscaler for a component, when enabled. */}}
{{- define "cairn.hpa" -}}
{{- $labels := dict "root" .root "component" .component }}
{{- if .values.autoscaling.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "cairn.serviceName" $labels }}
  labels:
    {{- include "cairn.labels" $labels | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "cairn.serviceName" $labels }}
  minReplicas: {{ .values.autoscaling.minReplicas }}
  maxReplicas: {{ .values.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .values.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end }}
