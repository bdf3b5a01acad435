//! The built-in entities: their names (the strings policies and tallies use) and ids.

use super::value::{entity_id, EntityId};

/// An entity the built-in detectors find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    Email,
    Phone,
    CreditCard,
    UsSsn,
    Iban,
    IpAddress,
    Secret,
}

impl Builtin {
    /// Every built-in entity, in the order [`BUILTIN_ENTITIES`] lists their names.
    pub const ALL: [Builtin; 7] = [
        Builtin::Email,
        Builtin::Phone,
        Builtin::CreditCard,
        Builtin::UsSsn,
        Builtin::Iban,
        Builtin::IpAddress,
        Builtin::Secret,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Builtin::Email => "EMAIL",
            Builtin::Phone => "PHONE",
            Builtin::CreditCard => "CREDIT_CARD",
            Builtin::UsSsn => "US_SSN",
            Builtin::Iban => "IBAN",
            Builtin::IpAddress => "IP_ADDRESS",
            Builtin::Secret => "SECRET",
        }
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The registry id of this entity's name (see [`entity_id`]).
    pub fn id(self) -> EntityId {
        entity_id(self.name())
    }
}

/// The names of the built-in entities.
pub const BUILTIN_ENTITIES: [&str; 7] = [
    Builtin::Email.name(),
    Builtin::Phone.name(),
    Builtin::CreditCard.name(),
    Builtin::UsSsn.name(),
    Builtin::Iban.name(),
    Builtin::IpAddress.name(),
    Builtin::Secret.name(),
];
