//! The catalogue of Kanister functions a Blueprint phase may call, with their arguments.
//!
//! Names and argument names are upstream Kanister's, so upstream Blueprints validate unchanged.
//! Declared once: [`crate::validate`] checks phases against it, the engine runs a function through
//! its [`Runner`] and reads its flags, `kanctl` validates with it.

/// Name, arguments and runner of one Kanister function: declared once, read by the validator,
/// the engine and `kanctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionSpec {
    /// The name used in a phase's `func`.
    pub name: &'static str,
    /// Arguments that must be present.
    pub required: &'static [&'static str],
    /// Arguments that may be present.
    pub optional: &'static [&'static str],
    /// What runs it; `None`: upstream's, validated but not served by this coordinator.
    pub runner: Option<Runner>,
    /// Whether its arguments stay unrendered (it renders them itself, as it polls).
    pub renders_own_arguments: bool,
    /// Whether it runs its commands in a pod the coordinator creates, whose environment the
    /// coordinator controls (its arguments get the Profile's credential by reference).
    pub task_pod: bool,
}

/// The engine's implementation of a function (one per served function; the engine's match on
/// it is exhaustive, so a function declared served is run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Runner {
    BackupData,
    BackupDataAll,
    BackupDataStats,
    BackupStream,
    CheckRepository,
    CopyVolumeData,
    CreateCSISnapshot,
    CreateCSISnapshotStatic,
    DeleteCSISnapshot,
    DeleteCSISnapshotContent,
    DeleteData,
    DeleteDataAll,
    KubeExec,
    KubeExecAll,
    KubeOps,
    KubeTask,
    LocationDelete,
    MultiContainerRun,
    PrepareData,
    RestoreCSISnapshot,
    RestoreData,
    RestoreDataAll,
    RestoreStream,
    ScaleWorkload,
    Wait,
    WaitV2,
}

impl FunctionSpec {
    /// Whether `arg` is a known (required or optional) argument of the function.
    pub fn accepts(&self, arg: &str) -> bool {
        self.required.contains(&arg) || self.optional.contains(&arg)
    }

    /// All known arguments, required ones first.
    pub fn arguments(&self) -> impl Iterator<Item = &'static str> {
        self.required.iter().chain(self.optional).copied()
    }
}

macro_rules! f {
    ($name:literal, [$($req:literal),*], [$($opt:literal),*]) => {
        FunctionSpec {
            name: $name,
            required: &[$($req),*],
            optional: &[$($opt),*],
            runner: None,
            renders_own_arguments: false,
            task_pod: false,
        }
    };
    ($name:literal, [$($req:literal),*], [$($opt:literal),*], $runner:ident $(, $flag:ident)*) => {
        FunctionSpec {
            runner: Some(Runner::$runner),
            $($flag: true,)*
            ..f!($name, [$($req),*], [$($opt),*])
        }
    };
}

/// Every known function, sorted by name.
pub const FUNCTIONS: &[FunctionSpec] = &[
    // Served by the pod's agent sidecar: `includePath` as the agent sees it, into the Profile's
    // repository. Outputs `backupID`, `backupTag`, `fileCount`, `size`, `phySize`.
    f!(
        "BackupData",
        ["namespace", "pod", "container", "includePath", "backupArtifactPrefix"],
        ["encryptionKey", "insecureTLS"],
        BackupData
    ),
    f!(
        "BackupDataAll",
        ["namespace", "container", "includePath", "backupArtifactPrefix"],
        ["pods", "encryptionKey", "insecureTLS"],
        BackupDataAll
    ),
    f!(
        "BackupDataStats",
        ["namespace", "backupArtifactPrefix", "backupID"],
        ["image", "statsMode", "encryptionKey", "podOverride", "podAnnotations", "podLabels"],
        BackupDataStats
    ),
    // Ours: the pod's agent sidecar runs `command` (with `env` added to its environment: the
    // place for passwords) and backs up its stdout. Outputs `backupID`, `size` (bytes read),
    // `phySize` (bytes uploaded).
    f!("BackupStream", ["namespace", "pod", "command"], ["container", "tags", "env"], BackupStream),
    f!(
        "CheckRepository",
        ["backupArtifactPrefix"],
        ["image", "encryptionKey", "insecureTLS", "podOverride", "podAnnotations", "podLabels"],
        CheckRepository
    ),
    f!(
        "CopyVolumeData",
        ["namespace", "volume", "dataArtifactPrefix"],
        ["image", "encryptionKey", "mountPath", "insecureTLS", "podOverride", "podAnnotations", "podLabels"],
        CopyVolumeData,
        task_pod
    ),
    // Through snapshot.storage.k8s.io/v1 objects (engine/csi.rs).
    f!("CreateCSISnapshot", ["pvc", "namespace", "snapshotClass"], ["name", "labels"], CreateCSISnapshot),
    f!(
        "CreateCSISnapshotStatic",
        ["name", "namespace", "driver", "snapshotHandle", "snapshotClass"],
        [],
        CreateCSISnapshotStatic
    ),
    f!("CreateRDSSnapshot", ["instanceID"], ["dbEngine", "credentialsSource", "credentialsSecret", "region"]),
    f!("DeleteCSISnapshot", ["name", "namespace"], [], DeleteCSISnapshot),
    f!("DeleteCSISnapshotContent", ["name"], [], DeleteCSISnapshotContent),
    // Served by the agent sidecar of `pod` (ours; required to run): Forget `backupID` (one id,
    // comma-separated ids or a list), then Prune with `reclaimSpace`.
    f!(
        "DeleteData",
        ["namespace", "backupArtifactPrefix"],
        [
            "pod",
            "image",
            "backupID",
            "backupTag",
            "encryptionKey",
            "reclaimSpace",
            "insecureTLS",
            "podOverride",
            "podAnnotations",
            "podLabels"
        ],
        DeleteData
    ),
    f!(
        "DeleteDataAll",
        ["namespace", "backupArtifactPrefix", "backupInfo"],
        ["image", "encryptionKey", "reclaimSpace", "insecureTLS", "podOverride", "podAnnotations", "podLabels"],
        DeleteDataAll
    ),
    f!("DeleteRDSSnapshot", ["snapshotID"], ["dbEngine", "credentialsSource", "credentialsSecret", "region"]),
    f!(
        "ExportRDSSnapshotToLocation",
        ["namespace", "instanceID", "snapshotID", "dbEngine"],
        [
            "username",
            "password",
            "backupArtifactPrefix",
            "databases",
            "securityGroupID",
            "dbSubnetGroup",
            "podAnnotations",
            "podLabels",
            "credentialsSource",
            "credentialsSecret",
            "region"
        ]
    ),
    f!("KubeExec", ["namespace", "pod", "command"], ["container"], KubeExec),
    f!("KubeExecAll", ["namespace", "pods", "containers", "command"], [], KubeExecAll),
    f!("KubeOps", ["operation"], ["spec", "namespace", "objectReference"], KubeOps),
    f!(
        "KubeTask",
        ["image", "command"],
        ["namespace", "podOverride", "podAnnotations", "podLabels"],
        KubeTask,
        task_pod
    ),
    f!("LocationDelete", ["artifact"], [], LocationDelete),
    f!(
        "MultiContainerRun",
        ["backgroundImage", "backgroundCommand", "outputImage", "outputCommand"],
        [
            "namespace",
            "initImage",
            "initCommand",
            "sharedVolumeMedium",
            "sharedVolumeSizeLimit",
            "sharedVolumeDir",
            "podOverride",
            "podLabels",
            "podAnnotations"
        ],
        MultiContainerRun,
        task_pod
    ),
    f!(
        "PrepareData",
        ["namespace", "image", "command"],
        ["volumes", "serviceaccount", "podOverride", "podAnnotations", "podLabels", "failOnError"],
        PrepareData,
        task_pod
    ),
    f!(
        "RestoreCSISnapshot",
        ["name", "pvc", "namespace", "storageClass", "restoreSize"],
        ["accessModes", "volumeMode", "labels"],
        RestoreCSISnapshot
    ),
    // Served by the agent sidecar of `pod` (required to run, as is `restorePath`); `image` is
    // accepted and unused.
    f!(
        "RestoreData",
        ["namespace", "backupArtifactPrefix"],
        [
            "image",
            "restorePath",
            "encryptionKey",
            "pod",
            "volumes",
            "backupTag",
            "backupIdentifier",
            "backupPath",
            "podOverride",
            "insecureTLS",
            "podAnnotations",
            "podLabels"
        ],
        RestoreData
    ),
    f!(
        "RestoreDataAll",
        ["namespace", "image", "backupArtifactPrefix", "backupInfo"],
        ["restorePath", "encryptionKey", "pods", "podOverride", "insecureTLS", "podAnnotations", "podLabels"],
        RestoreDataAll
    ),
    f!(
        "RestoreRDSSnapshot",
        ["instanceID"],
        [
            "snapshotID",
            "dbEngine",
            "backupArtifactPrefix",
            "backupID",
            "username",
            "password",
            "namespace",
            "securityGroupID",
            "dbSubnetGroup",
            "podAnnotations",
            "podLabels",
            "credentialsSource",
            "credentialsSecret",
            "region"
        ]
    ),
    // Ours: the pod's agent sidecar feeds snapshot `backupID` to `command`'s stdin (`env` as
    // for BackupStream).
    f!("RestoreStream", ["namespace", "pod", "command", "backupID"], ["container", "env"], RestoreStream),
    f!("ScaleWorkload", ["replicas"], ["namespace", "name", "kind", "waitForReady"], ScaleWorkload),
    f!("Wait", ["timeout", "conditions"], [], Wait, renders_own_arguments),
    f!("WaitV2", ["timeout", "conditions"], [], WaitV2, renders_own_arguments),
];

/// Looks a function up by its exact (case-sensitive) name.
pub fn lookup(name: &str) -> Option<&'static FunctionSpec> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// The known function whose name is closest to `name`, for "did you mean" hints.
pub fn closest(name: &str) -> Option<&'static str> {
    crate::render::closest_match(name, FUNCTIONS.iter().map(|f| f.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_sorted_and_unique() {
        let names: Vec<_> = FUNCTIONS.iter().map(|f| f.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn served_functions_run_under_their_own_name() {
        for f in FUNCTIONS {
            if let Some(r) = f.runner {
                assert_eq!(format!("{r:?}"), f.name, "one runner per function");
            }
            assert!(!(f.task_pod && f.renders_own_arguments), "{}", f.name);
        }
        let served = FUNCTIONS.iter().filter(|f| f.runner.is_some()).count();
        assert_eq!(served, 26, "a function was declared served or unserved");
        assert!(lookup("KubeTask").unwrap().task_pod && lookup("WaitV2").unwrap().renders_own_arguments);
        assert_eq!(lookup("CreateRDSSnapshot").unwrap().runner, None);
        assert_eq!(lookup("CreateCSISnapshot").unwrap().runner, Some(Runner::CreateCSISnapshot));
    }

    #[test]
    fn no_argument_is_both_required_and_optional() {
        for f in FUNCTIONS {
            for r in f.required {
                assert!(!f.optional.contains(r), "{}: {r}", f.name);
            }
        }
    }

    const POD: &[&str] = &["podOverride", "podAnnotations", "podLabels"];

    #[test]
    fn pod_arguments_are_optional_where_upstream_takes_them() {
        let kube_task = lookup("KubeTask").expect("KubeTask");
        for arg in POD {
            assert!(kube_task.accepts(arg) && !kube_task.required.contains(arg));
        }
        assert_eq!(closest("kubetask"), Some("KubeTask"));
    }
}
