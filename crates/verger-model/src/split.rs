//! Cutting an ONNX model in two at one tensor: the head (the model's input to that tensor) and the tail (that
//! tensor to the model's output), so that the two parts can run in different precisions.
//!
//! As in [`crate::app_model`], the bytes are not decoded and re-encoded: the cut walks the protobuf wire format,
//! keeps every field of the model and of its graph as it is in both parts, shares the nodes and initializers out,
//! and replaces only the graph inputs and outputs at the cut. Graphs nested in nodes (If, Loop) are not looked
//! into: a tail node whose subgraph reads a head tensor other than the cut would be missed, and MobileNetV2 has
//! none.

use std::collections::HashSet;

use prost::Message;

use crate::app_model::{
    encode_bytes, encode_message, fields, Dimension, Shape, TensorType, TypeProto, ValueInfo, DATA_FLOAT,
    GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_NODE, GRAPH_OUTPUT, MODEL_GRAPH,
};
use crate::error::ModelError;

/// `model` cut at float tensor `at` into (head, tail): the head computes `at` from the model's inputs; the tail
/// takes `at` as its only input and computes the model's outputs. `shape`, if known, is declared for `at`
/// (`None` for a dimension of unknown size); some runtimes need at least its rank. Fails when `at` is not
/// produced by the graph, or when the tail would need another tensor of the head.
pub fn split(model: &[u8], at: &str, shape: Option<&[Option<i64>]>) -> Result<(Vec<u8>, Vec<u8>), ModelError> {
    let bad = |what: String| ModelError::Split(format!("cutting the model at {at:?}: {what}"));
    let model_fields = fields(model)?;
    let graphs: Vec<&[u8]> = model_fields
        .iter()
        .filter(|f| f.number == MODEL_GRAPH)
        .filter_map(|f| f.payload)
        .collect();
    let [graph] = graphs[..] else {
        return Err(bad(format!("the model holds {} graphs, not one", graphs.len())));
    };
    let graph_fields = fields(graph)?;
    let mut nodes = Vec::new();
    for field in &graph_fields {
        if let (GRAPH_NODE, Some(payload)) = (field.number, field.payload) {
            nodes.push(NodeNames::decode(payload).map_err(|e| bad(e.to_string()))?);
        }
    }
    // The head: the nodes `at` depends on, found walking back from it.
    let producer = |tensor: &str| nodes.iter().position(|n| n.output.iter().any(|o| o == tensor));
    let mut in_head = vec![false; nodes.len()];
    let mut pending = vec![producer(at).ok_or_else(|| bad("no node of the graph produces it".into()))?];
    while let Some(i) = pending.pop() {
        if !std::mem::replace(&mut in_head[i], true) {
            pending.extend(nodes[i].input.iter().filter_map(|t| producer(t)));
        }
    }
    let head_tensors: HashSet<&str> = nodes
        .iter()
        .zip(&in_head)
        .filter(|(_, h)| **h)
        .flat_map(|(n, _)| n.output.iter().map(String::as_str))
        .collect();
    let mut head_uses = HashSet::new();
    let mut tail_uses = HashSet::new();
    for (node, head) in nodes.iter().zip(&in_head) {
        for input in &node.input {
            if !head && input != at && head_tensors.contains(input.as_str()) {
                return Err(bad(format!("the rest of the graph also reads {input:?}")));
            }
            match head {
                true => head_uses.insert(input.as_str()),
                false => tail_uses.insert(input.as_str()),
            };
        }
    }
    let cut = ValueInfo {
        name: at.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorType {
                elem_type: DATA_FLOAT,
                shape: shape.map(|dims| Shape {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            dim_value: *d,
                            dim_param: None,
                        })
                        .collect(),
                }),
            }),
        }),
    };
    let (mut head, mut tail) = (Vec::with_capacity(graph.len()), Vec::with_capacity(graph.len()));
    let mut node_index = 0;
    for field in &graph_fields {
        match (field.number, field.payload) {
            (GRAPH_NODE, _) => {
                let part = if in_head[node_index] { &mut head } else { &mut tail };
                part.extend_from_slice(field.raw);
                node_index += 1;
            }
            (GRAPH_INITIALIZER, Some(payload)) => {
                let name = TensorName::decode(payload).map_err(|e| bad(e.to_string()))?.name;
                if head_uses.contains(name.as_str()) {
                    head.extend_from_slice(field.raw);
                }
                if tail_uses.contains(name.as_str()) {
                    tail.extend_from_slice(field.raw);
                }
            }
            // The model's inputs feed the head; its outputs come from the tail.
            (GRAPH_INPUT, _) => head.extend_from_slice(field.raw),
            (GRAPH_OUTPUT, _) => tail.extend_from_slice(field.raw),
            _ => {
                head.extend_from_slice(field.raw);
                tail.extend_from_slice(field.raw);
            }
        }
    }
    encode_message(GRAPH_OUTPUT, &cut, &mut head);
    encode_message(GRAPH_INPUT, &cut, &mut tail);
    let wrap = |graph: &[u8]| {
        let mut out = Vec::with_capacity(graph.len() + 1024);
        for field in &model_fields {
            match field.number {
                MODEL_GRAPH => encode_bytes(MODEL_GRAPH, graph, &mut out),
                _ => out.extend_from_slice(field.raw),
            }
        }
        out
    };
    Ok((wrap(&head), wrap(&tail)))
}

/// The tensor names of an ONNX NodeProto (the rest of it is kept as bytes).
#[derive(Clone, PartialEq, Message)]
struct NodeNames {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
}

/// The name of an ONNX TensorProto.
#[derive(Clone, PartialEq, Message)]
struct TensorName {
    #[prost(string, tag = "8")]
    name: String,
}
