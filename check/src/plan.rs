//! The plan: which spendings a run sends, generated from the seed alone
//! (the same seed, counts and obt-check version give the same amounts,
//! names and sending order).

use obt_contract::{Amount, Identity, PersonName};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

/// Largest planned amount, in cents: 99,999.99.
const MAX_CENTS: i64 = 9_999_999;

const NAMES: &[&str] = &[
    "Martin", "Ana", "Jonas", "Chloé", "Søren", "Amira", "Kenji", "Lucía", "Olu", "Mei", "Rafael",
    "Ingrid", "Tomás", "Zoë", "Nikolai", "Priya",
];
const SURNAMES: &[&str] = &[
    "Robi",
    "García",
    "Nakamura",
    "Okafor",
    "Müller",
    "Dubois",
    "Kowalski",
    "Silva",
    "O'Brien",
    "Nguyen",
    "Haddad",
    "Johansson",
    "Rossi",
    "Petrov",
];

/// One spending to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Its position in the plan (stable across runs with the same seed).
    pub index: usize,
    pub identity: String,
    pub name: String,
    pub surname: String,
    /// Positive, two fraction digits, valid for the contract.
    pub amount: Decimal,
}

/// What a run sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub seed: u64,
    pub prefix: String,
    /// `{prefix}-0` .. `{prefix}-{K-1}`.
    pub identities: Vec<String>,
    /// In sending order (shuffled: each identity's spendings interleave).
    pub spendings: Vec<Planned>,
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "--prefix {prefix:?} makes the identity {identity:?}, which the api would refuse ({reason}): \
         use 1-50 characters of A-Z a-z 0-9 . _ : -"
    )]
    Identity {
        prefix: String,
        identity: String,
        reason: obt_contract::IdentityError,
    },
    #[error("--spendings and --identities must be at least 1")]
    Empty,
}

/// The plan of `spendings` spendings over `identities` identities named
/// after `prefix`, from `seed`. Spending `i` belongs to identity `i % K`,
/// so each identity gets `N / K` or one more; every identity has one name
/// and surname.
pub fn make(
    seed: u64,
    prefix: &str,
    spendings: usize,
    identities: usize,
) -> Result<Plan, PlanError> {
    if spendings == 0 || identities == 0 {
        return Err(PlanError::Empty);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<String> = (0..identities)
        .map(|k| {
            let identity = format!("{prefix}-{k}");
            Identity::parse(&identity)
                .map(|_| identity.clone())
                .map_err(|reason| PlanError::Identity {
                    prefix: prefix.to_owned(),
                    identity,
                    reason,
                })
        })
        .collect::<Result<_, _>>()?;
    let people: Vec<(String, String)> = ids
        .iter()
        .map(|_| {
            let name = NAMES.choose(&mut rng).copied().unwrap_or("Martin");
            let surname = SURNAMES.choose(&mut rng).copied().unwrap_or("Robi");
            (name.to_owned(), surname.to_owned())
        })
        .collect();
    let mut planned: Vec<Planned> = (0..spendings)
        .map(|index| {
            let k = index % identities;
            let cents = rng.random_range(1..=MAX_CENTS);
            Planned {
                index,
                identity: ids[k].clone(),
                name: people[k].0.clone(),
                surname: people[k].1.clone(),
                amount: Decimal::new(cents, 2),
            }
        })
        .collect();
    planned.shuffle(&mut rng);
    debug_assert!(planned.iter().all(valid));
    Ok(Plan {
        seed,
        prefix: prefix.to_owned(),
        identities: ids,
        spendings: planned,
    })
}

/// Whether the api's contract accepts `planned`.
fn valid(planned: &Planned) -> bool {
    Identity::parse(&planned.identity).is_ok()
        && PersonName::parse(&planned.name).is_ok()
        && PersonName::parse(&planned.surname).is_ok()
        && Amount::parse(&planned.amount.to_string()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_plan() {
        let a = make(42, "chk-x", 50, 7).expect("valid");
        let b = make(42, "chk-x", 50, 7).expect("valid");
        let c = make(43, "chk-x", 50, 7).expect("valid");
        assert_eq!(a, b);
        assert_ne!(a.spendings, c.spendings);
    }

    #[test]
    fn every_spending_is_valid_for_the_contract_and_spread_over_the_identities() {
        let plan = make(7, "chk-ab12", 1000, 20).expect("valid");
        assert_eq!(plan.spendings.len(), 1000);
        assert_eq!(plan.identities.len(), 20);
        assert!(plan.spendings.iter().all(valid));
        assert!(plan.spendings.iter().all(|p| p.amount.scale() == 2));
        for identity in &plan.identities {
            let n = plan
                .spendings
                .iter()
                .filter(|p| &p.identity == identity)
                .count();
            assert_eq!(n, 50, "{identity}");
        }
        // Shuffled: not in index order.
        assert!(plan.spendings.windows(2).any(|w| w[1].index < w[0].index));
    }

    #[test]
    fn a_prefix_the_api_would_refuse_is_an_error() {
        assert!(matches!(
            make(1, "has space", 1, 1),
            Err(PlanError::Identity { .. })
        ));
        assert!(matches!(
            make(1, &"x".repeat(64), 1, 1),
            Err(PlanError::Identity { .. })
        ));
        assert!(matches!(make(1, "ok", 0, 1), Err(PlanError::Empty)));
    }
}
