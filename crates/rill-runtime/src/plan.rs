//! Operator chaining: which operators run in one task.
//!
//! An operator joins the task of its input when nothing would be gained by
//! a queue between them: it has exactly one input edge, the edge does not
//! redistribute records (forward, or any partitioning between two operators
//! of parallelism 1), both sides have the same parallelism, and neither side
//! asked for a new chain. Records then move by a plain function call.

use rill_api::graph::{JobGraph, NodeKind, Partition};

/// The chaining decisions for a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// For each node, the node whose task it is chained into, if any.
    pub chained_into: Vec<Option<usize>>,
    /// Nodes that start a task, in graph order.
    pub heads: Vec<usize>,
}

impl Plan {
    pub fn of(graph: &JobGraph) -> Plan {
        let chained_into: Vec<Option<usize>> = graph
            .nodes
            .iter()
            .map(|n| chain_target(graph, n.id))
            .collect();
        let heads = chained_into
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_none())
            .map(|(i, _)| i)
            .collect();
        Plan {
            chained_into,
            heads,
        }
    }

    /// The head of the task a node runs in.
    pub fn head_of(&self, mut node: usize) -> usize {
        while let Some(up) = self.chained_into[node] {
            node = up;
        }
        node
    }

    /// Operators in each task, heads first (for logs and the dashboard).
    pub fn tasks(&self, graph: &JobGraph) -> Vec<Vec<usize>> {
        self.heads
            .iter()
            .map(|&h| {
                (0..graph.nodes.len())
                    .filter(|&n| self.head_of(n) == h)
                    .collect()
            })
            .collect()
    }
}

fn chain_target(graph: &JobGraph, node: usize) -> Option<usize> {
    let n = &graph.nodes[node];
    if !n.chainable || !matches!(n.kind, NodeKind::OneInput(_)) || n.inputs.len() != 1 {
        return None;
    }
    let [edge] = n.inputs[0].as_slice() else {
        return None;
    };
    let up = &graph.nodes[edge.from];
    let (p_up, p_down) = (graph.parallelism_of(up), graph.parallelism_of(n));
    let redistributes = match edge.partition {
        Partition::Forward => p_up != p_down,
        _ => !(p_up == 1 && p_down == 1),
    };
    (!redistributes).then_some(edge.from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_api::{Configuration, StreamEnv};

    #[test]
    fn forward_chains_and_keyed_exchange_does_not() {
        let mut conf = Configuration::new();
        conf.set("parallelism.default", "2").unwrap();
        let env = StreamEnv::new("t", conf).unwrap();
        let s = env.from_collection(vec![1u64, 2, 3]); // p=1
        let m = s.map(|v| v + 1).set_parallelism(1); // chained into the source
        let f = m.filter(|v| *v > 1); // p=2: rebalanced, new task
        let k = f.key_by(|v| *v).reduce(|a, b| a + b); // keyed exchange
        let _sink = k.for_each(|_, _| {}); // forward, same parallelism: chained
        let g = env.graph();
        let plan = Plan::of(&g);
        assert_eq!(plan.chained_into, vec![None, Some(0), None, None, Some(3)]);
        assert_eq!(plan.tasks(&g), vec![vec![0, 1], vec![2], vec![3, 4]]);
    }

    #[test]
    fn a_keyed_exchange_between_single_subtasks_is_a_call() {
        let env = StreamEnv::new("t", Configuration::new()).unwrap();
        let s = env.from_collection(vec![1u64]);
        let _ = s.key_by(|v| *v).reduce(|a, b| a + b).start_new_chain();
        let s2 = env.from_collection(vec![1u64]);
        let _ = s2.key_by(|v| *v).reduce(|a, b| a + b);
        let plan = Plan::of(&env.graph());
        assert_eq!(plan.chained_into, vec![None, None, None, Some(2)]);
    }
}
