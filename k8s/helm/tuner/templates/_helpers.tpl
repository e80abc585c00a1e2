{{/* Names and labels. */}}
{{- define "tuner.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tuner.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tuner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tuner.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* One shell word: KubeRay runs the entrypoint through a shell. */}}
{{- define "tuner.shq" -}}
'{{ replace "'" "'\\''" . }}'
{{- end -}}

{{- define "tuner.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The S3 endpoint: the values' one, else the dev MinIO's service when it is on. */}}
{{- define "tuner.endpoint" -}}
{{- if .Values.storage.endpoint -}}
{{- .Values.storage.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "http://%s-minio:9000" (include "tuner.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* S3 settings for every Ray container: endpoint and region from values, credentials
     only from the existing Secret. */}}
{{- define "tuner.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.credentialsSecret.name }}
      key: {{ .Values.storage.credentialsSecret.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.credentialsSecret.name }}
      key: {{ .Values.storage.credentialsSecret.secretAccessKeyKey }}
{{- with (include "tuner.endpoint" .) }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
# Non-AWS servers (MinIO, Ceph) reject the newer default checksums.
- name: AWS_REQUEST_CHECKSUM_CALCULATION
  value: when_required
- name: AWS_RESPONSE_CHECKSUM_VALIDATION
  value: when_required
{{- end }}
{{- with .Values.storage.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
- name: TF_CPP_MIN_LOG_LEVEL
  value: "2"
# Every pod has the credentials from the Secret: tuner need not copy them into Ray's
# runtime environment (where the dashboard would show them).
- name: TUNER_FORWARD_CREDENTIALS
  value: "0"
# The image's home is read-only; Ray, TensorFlow and CUDA caches go to /tmp.
- name: HOME
  value: /tmp
{{- end -}}

{{/* Writable paths under a read-only root filesystem; /dev/shm holds Ray's object
     store (objectStoreGi) plus 1 GiB. */}}
{{- define "tuner.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ printf "%dGi" (add1 (int .objectStoreGi)) }}
{{- end -}}

{{- define "tuner.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- end -}}

{{- define "tuner.podCommon" -}}
serviceAccountName: {{ include "tuner.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Every values problem at once, one line each; rendering stops if there is any. */}}
{{- /* A Kubernetes memory quantity (16Gi, 16000Mi, 17G, 1.5Gi, bytes) in GiB. */ -}}
{{- define "tuner.gib" -}}
{{- $q := toString . -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $units := dict "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 -}}
{{- $unit := trimPrefix $num $q -}}
{{- divf (mulf (float64 $num) (float64 (default 1.0 (get $units $unit)))) 1073741824.0 -}}
{{- end -}}

{{- define "tuner.validate" -}}
{{- $problems := list -}}
{{- $spec := dict -}}
{{- $parsed := fromYaml (default "{}" .Values.experiment.specYaml) -}}
{{- if hasKey $parsed "Error" -}}
{{- $problems = append $problems (printf "experiment.specYaml is not valid YAML: %s" (get $parsed "Error")) -}}
{{- else -}}
{{- $spec = $parsed -}}
{{- end -}}
{{- if or (hasKey $spec "name") (hasKey $spec "storage") -}}
{{- $problems = append $problems "experiment.specYaml sets `name` or `storage`; set them with experiment.name and storage.uri instead." -}}
{{- end -}}
{{- $scaling := default dict $spec.scaling -}}
{{- $workers := int (default 2 $scaling.workers) -}}
{{- $useGpu := default false $scaling.use_gpu -}}
{{- $gpusPerWorker := float64 (default 1 $scaling.gpus_per_worker) -}}
{{- $cpusPerWorker := float64 (default 1 $scaling.cpus_per_worker) -}}
{{- $fullname := include "tuner.fullname" . -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $fullname) -}}
{{- $problems = append $problems (printf "The release name makes the RayJob name %q, which KubeRay rejects (it must start with a letter: lower-case letters, digits and '-'); choose another release name." $fullname) -}}
{{- end -}}
{{- if not .Values.storage.uri -}}
{{- $problems = append $problems "storage.uri is not set; set it to s3://bucket/prefix (--set storage.uri=...)." -}}
{{- end -}}
{{- $totalGpus := 0.0 -}}
{{- $fits := false -}}
{{- $names := dict -}}
{{- range $i, $g := .Values.workerGroups -}}
{{- if hasKey $names $g.name -}}
{{- $problems = append $problems (printf "workerGroups[%d].name %q is used twice; group names must be unique." $i $g.name) -}}
{{- end -}}
{{- $_ := set $names $g.name true -}}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) -}}
{{- $problems = append $problems (printf "workerGroups[%d] (%s): replicas is %d, but must be between minReplicas (%d) and maxReplicas (%d)." $i $g.name (int $g.replicas) (int $g.minReplicas) (int $g.maxReplicas)) -}}
{{- end -}}
{{- $totalGpus = addf $totalGpus (mulf (float64 $g.gpus) (float64 $g.replicas)) -}}
{{- if and (ge (float64 $g.rayCPUs) $cpusPerWorker) (or (not $useGpu) (ge (float64 $g.gpus) $gpusPerWorker)) (gt (int $g.replicas) 0) -}}
{{- $fits = true -}}
{{- end -}}
{{- end -}}
{{- if not $fits -}}
{{- $problems = append $problems (printf "No worker group's pod fits one Train worker (%v CPUs%s); raise a group's rayCPUs/gpus or lower experiment scaling." $cpusPerWorker (ternary (printf " and %v GPUs" $gpusPerWorker) "" $useGpu)) -}}
{{- end -}}
{{- if and $useGpu (lt $totalGpus (mulf $gpusPerWorker (float64 $workers))) -}}
{{- $problems = append $problems (printf "The spec asks for %d workers x %v GPUs per trial, but the worker groups' replicas have %v GPUs in all; add GPU workers or set use_gpu: false." $workers $gpusPerWorker $totalGpus) -}}
{{- end -}}
{{- if and (not $useGpu) (gt $totalGpus 0.0) -}}
{{- $problems = append $problems (printf "The worker groups have %v GPUs, but the spec's scaling.use_gpu is false, so trials would not use them; set use_gpu: true or gpus: 0." $totalGpus) -}}
{{- end -}}
{{- $bucket := printf "s3://%s" .Values.minio.bucket -}}
{{- if and .Values.minio.enabled .Values.storage.uri (ne .Values.storage.uri $bucket) (not (hasPrefix (printf "%s/" $bucket) .Values.storage.uri)) -}}
{{- $problems = append $problems (printf "storage.uri is %q, but with minio.enabled it must be in the dev bucket: %s/..." .Values.storage.uri $bucket) -}}
{{- end -}}
{{- if and .Values.minio.enabled .Values.storage.endpoint -}}
{{- $problems = append $problems "storage.endpoint is set and minio.enabled is true; the job would not use the dev MinIO. Leave storage.endpoint empty or disable minio." -}}
{{- end -}}
{{- /* The head's memory: Ray's services and the tuner driver, the object store, and per
running trial its driver, Ray Train controller, synchronization actor and placement-group
cleaner (docs/scaling.md, `bench/run.py head`). Running trials: as many as the head's
drivers, the worker groups' GPUs (or CPUs) and the spec allow. */ -}}
{{- $driverCpus := float64 (default 1 $scaling.driver_cpus) -}}
{{- $concurrent := min (int .Values.head.maxTrialDrivers) (int (floor (divf (float64 .Values.head.rayCPUs) $driverCpus))) -}}
{{- $workerSlots := 0 -}}
{{- range .Values.workerGroups -}}
{{- $perPod := int (floor (divf (float64 .rayCPUs) $cpusPerWorker)) -}}
{{- if $useGpu -}}
{{- $perPod = min $perPod (int (floor (divf (float64 .gpus) $gpusPerWorker))) -}}
{{- end -}}
{{- $workerSlots = add $workerSlots (mul $perPod (int .replicas)) -}}
{{- end -}}
{{- $concurrent = min $concurrent (div $workerSlots $workers) -}}
{{- if $scaling.max_concurrent_trials -}}
{{- $concurrent = min $concurrent (int $scaling.max_concurrent_trials) -}}
{{- end -}}
{{- $headMemory := default (dig "requests" "memory" "" .Values.head.resources) (dig "limits" "memory" "" .Values.head.resources) -}}
{{- if and $headMemory (gt $concurrent 0) -}}
{{- $sizing := .Values.head.sizing -}}
{{- $needGi := addf (float64 $sizing.baseGi) (float64 .Values.head.objectStoreGi) (mulf (float64 $concurrent) (float64 $sizing.perTrialGi)) -}}
{{- $haveGi := float64 (include "tuner.gib" $headMemory) -}}
{{- if lt $haveGi $needGi -}}
{{- $problems = append $problems (printf "The head's memory (%s) holds fewer than the %d trials that can run at once: they need about %.1f GiB (head.sizing.baseGi %v + head.objectStoreGi %v + %d x head.sizing.perTrialGi %v, see docs/scaling.md). Raise head.resources memory, or lower head.maxTrialDrivers or the spec's scaling.max_concurrent_trials." $headMemory $concurrent $needGi $sizing.baseGi .Values.head.objectStoreGi $concurrent $sizing.perTrialGi) -}}
{{- end -}}
{{- end -}}
{{- if gt (float64 (default 1 $scaling.driver_cpus)) (float64 .Values.head.rayCPUs) -}}
{{- $problems = append $problems (printf "head.rayCPUs is %v, less than one trial driver's scaling.driver_cpus (%v)." .Values.head.rayCPUs $scaling.driver_cpus) -}}
{{- end -}}
{{- if $problems -}}
{{- fail (printf "\n%s" (join "\n" $problems)) -}}
{{- end -}}
{{- end -}}
