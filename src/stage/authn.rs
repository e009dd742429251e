//! Authentication requirements of a route. The checks themselves arrive
//! with the identity store; this module holds what the config asked for.

/// One way a request may authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A public route.
    None,
}

impl AuthMethod {
    /// Methods a route may name, for messages.
    pub const NAMES: &'static [&'static str] = &["none"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(AuthMethod::None),
            _ => None,
        }
    }
}

/// What a route requires.
#[derive(Clone, Debug, Default)]
pub struct AuthPolicy {
    pub methods: Vec<AuthMethod>,
}

impl AuthPolicy {
    pub fn is_public(&self) -> bool {
        self.methods.contains(&AuthMethod::None)
    }
}
