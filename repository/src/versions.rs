//! Which versions of a model to serve, from its version policy and the version folders on disk
//! (Triton's `VersionsToLoad`).

use tritium_proto::inference::ModelVersionPolicy;
use tritium_proto::inference::model_version_policy::PolicyChoice;

use super::RepositoryError;

/// The versions to serve, ascending, from those on disk (`available`, any order) under `policy`.
///
/// `latest { num_versions: N }` takes the N highest, `all` takes every one, `specific` takes
/// exactly those listed and fails naming the first listed version that has no folder. No policy
/// (or an empty one) means Triton's default, latest 1. Selecting nothing is an error, as in
/// Triton. Errors leave the model name empty; [`select_model_versions`] fills it in.
pub fn select_versions(policy: Option<&ModelVersionPolicy>, available: &[i64]) -> Result<Vec<i64>, RepositoryError> {
    let mut on_disk = available.to_vec();
    on_disk.sort_unstable();
    on_disk.dedup();

    let selected = match policy.and_then(|p| p.policy_choice.as_ref()) {
        None => take_latest(&on_disk, 1),
        Some(PolicyChoice::Latest(latest)) => take_latest(&on_disk, latest.num_versions),
        Some(PolicyChoice::All(_)) => on_disk,
        Some(PolicyChoice::Specific(specific)) => {
            let mut wanted = specific.versions.clone();
            if let Some(&version) = wanted.iter().find(|v| on_disk.binary_search(v).is_err()) {
                return Err(RepositoryError::VersionNotOnDisk { model: String::new(), version });
            }
            wanted.sort_unstable();
            wanted.dedup();
            wanted
        }
    };
    if selected.is_empty() {
        return Err(RepositoryError::NoVersionAvailable { model: String::new() });
    }
    Ok(selected)
}

/// [`select_versions`] for a named model, so its errors name it.
pub fn select_model_versions(
    model: &str,
    policy: Option<&ModelVersionPolicy>,
    available: &[i64],
) -> Result<Vec<i64>, RepositoryError> {
    select_versions(policy, available).map_err(|e| e.with_model(model))
}

fn take_latest(sorted: &[i64], n: u32) -> Vec<i64> {
    let n = usize::try_from(n).unwrap_or(usize::MAX).min(sorted.len());
    sorted[sorted.len() - n..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_proto::inference::model_version_policy::{All, Latest, Specific};

    fn policy(choice: PolicyChoice) -> ModelVersionPolicy {
        ModelVersionPolicy { policy_choice: Some(choice) }
    }

    #[test]
    fn latest_takes_the_highest() {
        let latest = |n| policy(PolicyChoice::Latest(Latest { num_versions: n }));
        assert_eq!(select_versions(Some(&latest(1)), &[3, 1, 10, 2]).expect("ok"), [10]);
        assert_eq!(select_versions(Some(&latest(2)), &[3, 1, 10, 2]).expect("ok"), [3, 10]);
        assert_eq!(select_versions(Some(&latest(9)), &[2, 1]).expect("ok"), [1, 2]);
        assert!(matches!(select_versions(Some(&latest(0)), &[1]), Err(RepositoryError::NoVersionAvailable { .. })));
    }

    #[test]
    fn default_is_latest_one() {
        assert_eq!(select_versions(None, &[1, 5, 3]).expect("ok"), [5]);
        let empty = ModelVersionPolicy { policy_choice: None };
        assert_eq!(select_versions(Some(&empty), &[1, 5, 3]).expect("ok"), [5]);
    }

    #[test]
    fn all_takes_everything() {
        let all = policy(PolicyChoice::All(All {}));
        assert_eq!(select_versions(Some(&all), &[3, 1, 2, 2]).expect("ok"), [1, 2, 3]);
    }

    #[test]
    fn specific_takes_those_listed_and_names_a_missing_one() {
        let specific = |v: &[i64]| policy(PolicyChoice::Specific(Specific { versions: v.to_vec() }));
        assert_eq!(select_versions(Some(&specific(&[3, 1])), &[1, 2, 3]).expect("ok"), [1, 3]);
        let err = select_model_versions("m", Some(&specific(&[1, 3])), &[1, 2]).expect_err("fails");
        assert!(matches!(err, RepositoryError::VersionNotOnDisk { version: 3, .. }), "{err:?}");
        assert_eq!(err.to_string(), "version 3 is specified for model 'm' but the version directory is not present");
        assert_eq!(err.code(), tritium_proto::ErrorCode::InvalidArg);
        let err = select_model_versions("m", Some(&specific(&[])), &[1]).expect_err("fails");
        assert_eq!(err.to_string(), "at least one version must be available under the version policy of model 'm'");
    }

    #[test]
    fn nothing_on_disk_is_an_error() {
        let err = select_model_versions("m", None, &[]).expect_err("fails");
        assert!(matches!(err, RepositoryError::NoVersionAvailable { ref model } if model == "m"));
    }
}
