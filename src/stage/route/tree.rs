//! A prefix tree over path segments: the routes of a policy, looked up by
//! the longest prefix of a normalised path, segment by segment (so `/api`
//! matches `/api/x` but not `/apix`).

use std::collections::HashMap;

/// Index of a route in the policy's route list.
pub type RouteIndex = usize;

#[derive(Debug, Default)]
pub struct PrefixTree {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Routes whose path ends at this node, in config order.
    routes: Vec<RouteIndex>,
}

/// The segments a path is matched by. A segment's `;parameters` are not
/// part of it: Java servers (Tomcat, Jetty, Spring) serve `/admin;x/secret`
/// as `/admin/secret`, so it must meet `/admin`'s route, not a shorter one.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .filter(|s| !s.is_empty())
}

impl PrefixTree {
    /// Adds a route at `path` (already normalised).
    pub fn insert(&mut self, path: &str, route: RouteIndex) {
        let mut node = &mut self.root;
        for segment in segments(path) {
            node = node.children.entry(segment.into()).or_default();
        }
        node.routes.push(route);
    }

    /// The routes at the longest prefix of `path` that has any, or an empty
    /// slice when nothing matches.
    pub fn longest_match(&self, path: &str) -> &[RouteIndex] {
        let mut node = &self.root;
        let mut best: &[RouteIndex] = &node.routes;
        for segment in segments(path) {
            match node.children.get(segment) {
                Some(child) => {
                    node = child;
                    if !node.routes.is_empty() {
                        best = &node.routes;
                    }
                }
                None => break,
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let mut tree = PrefixTree::default();
        tree.insert("/api", 0);
        tree.insert("/api/v1/tasks", 1);
        tree.insert("/api/v1/tasks", 2);
        tree.insert("/health/", 3);
        let cases: &[(&str, &[usize])] = &[
            ("/api", &[0]),
            ("/api/", &[0]),
            ("/api/v1", &[0]),
            ("/api/v1/tasks", &[1, 2]),
            ("/api/v1/tasks/7", &[1, 2]),
            ("/api/v1/tasksx", &[0]),
            ("/apix", &[]),
            ("/", &[]),
            ("/health", &[3]),
            ("/other/api", &[]),
        ];
        for (path, want) in cases {
            assert_eq!(tree.longest_match(path), *want, "{path}");
        }
        tree.insert("/", 4);
        assert_eq!(tree.longest_match("/apix"), &[4]);
        assert_eq!(tree.longest_match("/"), &[4]);
        // Path parameters do not take a request out of its route.
        assert_eq!(tree.longest_match("/api;jsessionid=1/v1;x/tasks;y/7"), &[1, 2]);
        assert_eq!(tree.longest_match("/health;x"), &[3]);
    }
}
