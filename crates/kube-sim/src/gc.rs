//! Deletion and garbage-collection decisions, as pure functions.
//!
//! Kubernetes deletes in stages: an object with finalizers only gets a
//! `deletionTimestamp` and stays until its finalizers are removed; owners
//! deleted in the foreground wait for their blocking dependents; dependents
//! whose owners are all gone are collected; a terminating namespace empties
//! itself before it disappears. The store feeds a snapshot of objects to
//! [`plan`] after every write and applies the returned actions until none
//! are left, so the rules here are all there is to GC and are tested without
//! a server.

use std::collections::{HashMap, HashSet};

use crate::meta::OwnerRef;

/// The finalizer that makes an owner wait for its dependents.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer that makes an owner release its dependents first.
pub const ORPHAN: &str = "orphan";

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Delete the owner now, collect dependents afterwards.
    #[default]
    Background,
    /// Delete dependents first, then the owner.
    Foreground,
    /// Strip the owner references from dependents, keep them.
    Orphan,
}

impl Propagation {
    /// Parse the API's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Background" => Some(Propagation::Background),
            "Foreground" => Some(Propagation::Foreground),
            "Orphan" => Some(Propagation::Orphan),
            _ => None,
        }
    }

    /// The finalizer this policy adds to the owner, if any.
    pub fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND),
            Propagation::Orphan => Some(ORPHAN),
        }
    }
}

/// What a delete request does to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Remove it from storage now.
    Remove,
    /// Keep it, set `deletionTimestamp` and make `finalizers` the given list.
    MarkDeleting {
        /// The finalizers after the delete.
        finalizers: Vec<String>,
    },
}

/// Decide what deleting an object with these finalizers does.
pub fn delete_outcome(
    finalizers: &[String],
    propagation: Propagation,
    already_deleting: bool,
) -> DeleteOutcome {
    let mut fins = finalizers.to_vec();
    if let Some(f) = propagation.finalizer() {
        if !already_deleting && !fins.iter().any(|x| x == f) {
            fins.push(f.to_string());
        }
    }
    if fins.is_empty() {
        DeleteOutcome::Remove
    } else {
        DeleteOutcome::MarkDeleting { finalizers: fins }
    }
}

/// What GC needs to know about one stored object.
#[derive(Debug, Clone)]
pub struct Node<K> {
    /// The store's key.
    pub key: K,
    /// `metadata.uid`.
    pub uid: String,
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// `metadata.ownerReferences`.
    pub owners: Vec<OwnerRef>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.finalizers`.
    pub finalizers: Vec<String>,
    /// This is a Namespace object (its `metadata.name` is `namespace_name`).
    pub namespace_name: Option<String>,
}

/// One step for the store to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<K> {
    /// Delete this object with this propagation (as a client delete would).
    Delete(K, Propagation),
    /// Remove the owner references to these uids.
    RemoveOwnerRefs(K, Vec<String>),
    /// Remove this finalizer (which may complete a pending deletion).
    RemoveFinalizer(K, &'static str),
    /// The namespace is empty: remove it.
    FinalizeNamespace(K),
}

/// Plan the next round of garbage collection over a snapshot.
pub fn plan<K: Clone + Eq>(nodes: &[Node<K>]) -> Vec<Action<K>> {
    let mut actions = Vec::new();
    // Index once so a round is linear in the number of objects.
    let uids: HashSet<&str> = nodes.iter().map(|n| n.uid.as_str()).collect();
    let mut deps: HashMap<&str, Vec<&Node<K>>> = HashMap::new();
    for n in nodes {
        for o in &n.owners {
            deps.entry(o.uid.as_str()).or_default().push(n);
        }
    }
    let mut by_namespace: HashMap<&str, Vec<&Node<K>>> = HashMap::new();
    if nodes
        .iter()
        .any(|n| n.deleting && n.namespace_name.is_some())
    {
        for n in nodes {
            by_namespace
                .entry(n.namespace.as_str())
                .or_default()
                .push(n);
        }
    }
    let exists = |uid: &str| uids.contains(uid);
    let dependents_of = |uid: &str| deps.get(uid).into_iter().flatten().copied();
    for n in nodes {
        if n.deleting && n.finalizers.iter().any(|f| f == ORPHAN) {
            for d in dependents_of(&n.uid) {
                actions.push(Action::RemoveOwnerRefs(d.key.clone(), vec![n.uid.clone()]));
            }
            if dependents_of(&n.uid).next().is_none() {
                actions.push(Action::RemoveFinalizer(n.key.clone(), ORPHAN));
            }
            continue;
        }
        if n.deleting && n.finalizers.iter().any(|f| f == FOREGROUND) {
            let mut blocking = false;
            for d in dependents_of(&n.uid) {
                if !d.deleting {
                    actions.push(Action::Delete(d.key.clone(), Propagation::Foreground));
                }
                if d.owners
                    .iter()
                    .any(|o| o.uid == n.uid && o.block_owner_deletion)
                {
                    blocking = true;
                }
            }
            if !blocking {
                actions.push(Action::RemoveFinalizer(n.key.clone(), FOREGROUND));
            }
        }
        if let Some(ns) = &n.namespace_name {
            if n.deleting {
                let mut contents = by_namespace
                    .get(ns.as_str())
                    .into_iter()
                    .flatten()
                    .copied()
                    .peekable();
                if contents.peek().is_none() {
                    actions.push(Action::FinalizeNamespace(n.key.clone()));
                }
                for o in contents {
                    if !o.deleting {
                        actions.push(Action::Delete(o.key.clone(), Propagation::Background));
                    }
                }
            }
        }
        if !n.owners.is_empty() {
            let gone: Vec<String> = n
                .owners
                .iter()
                .filter(|o| !exists(&o.uid))
                .map(|o| o.uid.clone())
                .collect();
            if gone.len() == n.owners.len() {
                if !n.deleting {
                    actions.push(Action::Delete(n.key.clone(), Propagation::Background));
                }
            } else if !gone.is_empty() {
                actions.push(Action::RemoveOwnerRefs(n.key.clone(), gone));
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, owners: &[&str]) -> Node<String> {
        Node {
            key: key.into(),
            uid: format!("uid-{key}"),
            namespace: "ns".into(),
            owners: owners
                .iter()
                .map(|o| OwnerRef {
                    uid: format!("uid-{o}"),
                    kind: "X".into(),
                    name: o.to_string(),
                    block_owner_deletion: true,
                })
                .collect(),
            deleting: false,
            finalizers: Vec::new(),
            namespace_name: None,
        }
    }

    /// Run delete + GC to a fixed point on a tiny model; returns the order
    /// in which objects left storage.
    fn run(nodes: &mut Vec<Node<String>>, key: &str, p: Propagation) -> Vec<String> {
        let mut removed = Vec::new();
        let delete = |nodes: &mut Vec<Node<String>>, removed: &mut Vec<String>, key: &str, p| {
            if let Some(i) = nodes.iter().position(|n| n.key == key) {
                match delete_outcome(&nodes[i].finalizers, p, nodes[i].deleting) {
                    DeleteOutcome::Remove => {
                        removed.push(nodes.remove(i).key);
                    }
                    DeleteOutcome::MarkDeleting { finalizers } => {
                        nodes[i].deleting = true;
                        nodes[i].finalizers = finalizers;
                    }
                }
            }
        };
        delete(nodes, &mut removed, key, p);
        for _ in 0..100 {
            let actions = plan(nodes);
            if actions.is_empty() {
                break;
            }
            for a in actions {
                match a {
                    Action::Delete(k, p) => delete(nodes, &mut removed, &k, p),
                    Action::RemoveOwnerRefs(k, uids) => {
                        if let Some(n) = nodes.iter_mut().find(|n| n.key == k) {
                            n.owners.retain(|o| !uids.contains(&o.uid));
                        }
                    }
                    Action::RemoveFinalizer(k, f) => remove_fin(nodes, &mut removed, &k, f),
                    Action::FinalizeNamespace(k) => {
                        remove_fin(nodes, &mut removed, &k, "kubernetes")
                    }
                }
            }
        }
        removed
    }

    fn remove_fin(nodes: &mut Vec<Node<String>>, removed: &mut Vec<String>, key: &str, f: &str) {
        if let Some(i) = nodes.iter().position(|n| n.key == key) {
            nodes[i].finalizers.retain(|x| x != f);
            if nodes[i].deleting && nodes[i].finalizers.is_empty() {
                removed.push(nodes.remove(i).key);
            }
        }
    }

    #[test]
    fn delete_outcomes() {
        assert_eq!(
            delete_outcome(&[], Propagation::Background, false),
            DeleteOutcome::Remove
        );
        assert_eq!(
            delete_outcome(&[], Propagation::Foreground, false),
            DeleteOutcome::MarkDeleting {
                finalizers: vec![FOREGROUND.into()]
            }
        );
        assert_eq!(
            delete_outcome(&["x".into()], Propagation::Background, false),
            DeleteOutcome::MarkDeleting {
                finalizers: vec!["x".into()]
            }
        );
    }

    #[test]
    fn background_removes_owner_first_then_dependents() {
        let mut nodes = vec![
            node("deploy", &[]),
            node("rs", &["deploy"]),
            node("pod", &["rs"]),
        ];
        let order = run(&mut nodes, "deploy", Propagation::Background);
        assert_eq!(order, vec!["deploy", "rs", "pod"]);
        assert!(nodes.is_empty());
    }

    #[test]
    fn foreground_removes_dependents_first() {
        let mut nodes = vec![
            node("deploy", &[]),
            node("rs", &["deploy"]),
            node("pod", &["rs"]),
        ];
        let order = run(&mut nodes, "deploy", Propagation::Foreground);
        assert_eq!(order, vec!["pod", "rs", "deploy"]);
    }

    #[test]
    fn foreground_waits_for_finalized_dependents() {
        let mut nodes = vec![node("owner", &[]), node("dep", &["owner"])];
        nodes[1].finalizers = vec!["example.com/hold".into()];
        let order = run(&mut nodes, "owner", Propagation::Foreground);
        assert!(
            order.is_empty(),
            "nothing leaves while the dependent is held"
        );
        assert!(nodes.iter().all(|n| n.deleting));
    }

    #[test]
    fn orphan_keeps_dependents() {
        let mut nodes = vec![node("owner", &[]), node("dep", &["owner"])];
        let order = run(&mut nodes, "owner", Propagation::Orphan);
        assert_eq!(order, vec!["owner"]);
        assert_eq!(nodes.len(), 1);
        assert!(nodes[0].owners.is_empty());
    }

    #[test]
    fn a_live_second_owner_keeps_the_dependent() {
        let mut nodes = vec![node("a", &[]), node("b", &[]), node("dep", &["a", "b"])];
        let order = run(&mut nodes, "a", Propagation::Background);
        assert_eq!(order, vec!["a"]);
        let dep = nodes.iter().find(|n| n.key == "dep").unwrap();
        assert_eq!(dep.owners.len(), 1);
        assert_eq!(dep.owners[0].uid, "uid-b");
    }

    #[test]
    fn terminating_namespace_empties_then_goes() {
        let mut ns = node("ns-obj", &[]);
        ns.namespace = String::new();
        ns.namespace_name = Some("ns".into());
        ns.finalizers = vec!["kubernetes".into()];
        let mut nodes = vec![ns, node("cm", &[]), node("held", &[])];
        nodes[2].finalizers = vec!["x".into()];
        let order = run(&mut nodes, "ns-obj", Propagation::Background);
        assert_eq!(order, vec!["cm"], "held object keeps the namespace alive");
        // Release the held object: the namespace follows.
        nodes[1].finalizers.clear();
        let i = 1;
        let removed = nodes.remove(i).key;
        assert_eq!(removed, "held");
        let again = run(&mut nodes, "nothing", Propagation::Background);
        assert_eq!(again, vec!["ns-obj"]);
    }
}
