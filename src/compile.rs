//! What every compile step gets: the loaded config, the process's services,
//! one shared sink for problems, and a way to compile a stage's part of
//! every route into that route's slot.
//!
//! Compiling never stops at the first problem: each step pushes what it
//! finds into [`Problems`] and carries on with what it can, so `check` lists
//! everything in one pass. [`crate::policy::compile`] runs the steps.

use std::any::Any;
use std::sync::Arc;

use crate::config::{Config, ConfigError, ConfigErrors, LoadedConfig, RouteConfig};
use crate::pipeline::{RouteSlots, Slot};
use crate::runtime::Runtime;

/// Every problem found while compiling.
pub struct Problems<'a> {
    loaded: &'a LoadedConfig,
    errors: Vec<ConfigError>,
    /// Things worth saying that are not errors (see [`Problems::warn`]).
    warnings: Vec<String>,
}

impl<'a> Problems<'a> {
    pub fn new(loaded: &'a LoadedConfig) -> Self {
        Problems {
            loaded,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Whether the config is for production (stricter rules, more warnings).
    pub fn production(&self) -> bool {
        self.loaded.config.environment.is_production()
    }

    /// Something `check` and `serve` say that does not stop the config.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// The warnings so far.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// A problem with `key` (`server.listen`, `cors.origins`), located in
    /// the file when the key was written there.
    pub fn at(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(self.loaded.error_at(key, message));
    }

    /// A problem with one key of a route, naming the route by its `id` or
    /// path as well as its place in the file.
    pub fn in_route(&mut self, route: &RouteEntry<'_>, field: &str, message: impl Into<String>) {
        let key = if field.is_empty() {
            route.key.clone()
        } else {
            format!("{}.{field}", route.key)
        };
        let mut error = self.loaded.error_near(&key, &route.key, message);
        error.context = Some(route.label());
        self.errors.push(error);
    }

    /// Every problem, in file order (problems without a place last).
    pub fn into_result(mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        // A stable sort: problems of one key keep the order they were found in.
        self.errors.sort_by_key(|e| e.position().unwrap_or(usize::MAX));
        Err(ConfigErrors(self.errors))
    }
}

/// One `[[routes]]` entry as the compile steps see it.
pub struct RouteEntry<'a> {
    /// `routes[3]`.
    pub key: String,
    /// Its `id`, or else its normalised path.
    pub id: Arc<str>,
    pub config: &'a RouteConfig,
}

impl RouteEntry<'_> {
    /// How messages name the route.
    pub fn label(&self) -> String {
        match &self.config.id {
            Some(id) => format!("route `{id}`"),
            None => format!("route `{}`", self.config.path),
        }
    }
}

/// The state of one compile: problems so far, and each route's slots.
pub struct CompileCx<'a> {
    pub loaded: &'a LoadedConfig,
    pub config: &'a Config,
    pub runtime: &'a Runtime,
    pub problems: Problems<'a>,
    routes: Vec<RouteEntry<'a>>,
    /// `slots[route][slot]`.
    slots: Vec<Vec<Option<Box<dyn Any + Send + Sync>>>>,
    slots_made: usize,
    /// Things worth saying at start that are not problems.
    pub warnings: Vec<String>,
    /// The keys derived from `secrets.session_key` (and the previous ones),
    /// for the stages that make or read session cookies.
    pub session_keys: Option<Arc<crate::sessions::SessionKeys>>,
    /// `[[auth.oidc]]`, compiled once for the login pages and sessions.
    pub providers: Option<Arc<crate::oidc::Providers>>,
}

impl<'a> CompileCx<'a> {
    /// `route_ids` names each `[[routes]]` entry, in file order.
    pub fn new(loaded: &'a LoadedConfig, runtime: &'a Runtime, route_ids: Vec<Arc<str>>) -> Self {
        let config = &loaded.config;
        let routes: Vec<RouteEntry<'a>> = config
            .routes
            .iter()
            .zip(route_ids)
            .enumerate()
            .map(|(index, (config, id))| RouteEntry {
                key: format!("routes[{index}]"),
                id,
                config,
            })
            .collect();
        CompileCx {
            loaded,
            config,
            runtime,
            problems: Problems::new(loaded),
            slots: routes.iter().map(|_| Vec::new()).collect(),
            slots_made: 0,
            routes,
            warnings: Vec::new(),
            session_keys: None,
            providers: None,
        }
    }

    pub fn production(&self) -> bool {
        self.config.environment.is_production()
    }

    pub fn routes(&self) -> &[RouteEntry<'a>] {
        &self.routes
    }

    /// Compiles a stage's part of every route (`None`: nothing to do on
    /// that route) and returns the slot the results are kept in.
    pub fn per_route<T: Any + Send + Sync>(
        &mut self,
        mut compile: impl FnMut(&RouteEntry<'a>, &mut Problems<'a>) -> Option<T>,
    ) -> Slot<T> {
        let slot = Slot::new(self.slots_made);
        self.slots_made += 1;
        for (route, slots) in self.routes.iter().zip(&mut self.slots) {
            let policy = compile(route, &mut self.problems);
            slots.push(policy.map(|p| Box::new(p) as Box<dyn Any + Send + Sync>));
        }
        slot
    }

    /// A problem with one key of route `index` (see [`Problems::in_route`]).
    pub fn route_problem(&mut self, index: usize, field: &str, message: impl Into<String>) {
        self.problems.in_route(&self.routes[index], field, message);
    }

    /// Takes the slots filled for route `index` (once, when it is built).
    pub fn take_slots(&mut self, index: usize) -> RouteSlots {
        RouteSlots::new(std::mem::take(&mut self.slots[index]))
    }
}
