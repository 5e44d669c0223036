//! The app's model: one ONNX file that takes a 224×224 RGB photo as uint8 NHWC and gives class probabilities.
//! It is the featurizer's own graph, byte for byte, with the input scaling (`x / 127.5 − 1`, float32, as the
//! pipeline computes it) spliced in front and a linear head behind: optional centring, the PCA projection
//! (MatMul, Spark's convention), the classifier (Gemm) and Softmax.
//!
//! The featurizer's bytes are not decoded and re-encoded (a partial ONNX schema would silently drop fields it
//! does not know): the splice walks the protobuf wire format, keeps every field of the model and its graph as
//! it is, and replaces only the graph's input `input` and output `features`. The few messages verger adds are
//! described below with `prost`, with the field numbers of `onnx.proto`.
//!
//! Scope: building the file and running it ([`AppSession`]). Where the weights come from is the caller's.

use prost::bytes::Buf;
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use prost::Message;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::error::ModelError;
use crate::runtime;

/// The featurizer's input and output names (what [`crate::Featurizer`] feeds and reads).
const FEATURIZER_INPUT: &str = "input";
const FEATURIZER_OUTPUT: &str = "features";
/// The app model's input and output names.
pub const APP_INPUT: &str = "image";
pub const APP_OUTPUT: &str = "probabilities";
/// The metadata property with the class names, a JSON array in output order.
pub const LABELS_PROPERTY: &str = "labels";

/// The linear head after the features.
#[derive(Debug, Clone)]
pub struct Head {
    /// Subtracted from the features before projecting (`--center` PCA), 1280 values.
    pub center: Option<Vec<f32>>,
    /// The PCA projection: `(components, k)` with `components` row-major `1280 × k` (one column per axis);
    /// `None` for a classifier on the raw features.
    pub projection: Option<(Vec<f32>, usize)>,
    /// `classes × dim` weights, row-major, and `classes` biases.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// Class names in output order.
    pub labels: Vec<String>,
    /// More metadata properties (key, value), such as the sha256s of what went in.
    pub metadata: Vec<(String, String)>,
}

impl Head {
    fn input_dim(&self, features: usize) -> usize {
        self.projection.as_ref().map_or(features, |(_, k)| *k)
    }

    fn check(&self, features: usize) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::AppModel(what));
        if let Some(center) = &self.center {
            if center.len() != features {
                return bad(format!("{} centring values for {features} features", center.len()));
            }
        }
        if let Some((components, k)) = &self.projection {
            if *k == 0 || components.len() != features * k {
                return bad(format!(
                    "{} projection values are not {features} × {k}",
                    components.len()
                ));
            }
        }
        let classes = self.labels.len();
        let dim = self.input_dim(features);
        if classes < 2 || self.bias.len() != classes || self.weights.len() != classes * dim {
            return bad(format!(
                "{} weights and {} biases for {classes} classes of {dim}-d inputs",
                self.weights.len(),
                self.bias.len()
            ));
        }
        Ok(())
    }
}

/// The app model: `featurizer` (ONNX bytes with input `input`, float32 NHWC, and output `features`, 1280-d)
/// with the scaling in front and `head` behind. Needs opset 13 or later (Softmax over the last axis).
pub fn build(featurizer: &[u8], head: &Head) -> Result<Vec<u8>, ModelError> {
    head.check(crate::FEATURE_DIM)?;
    let model = fields(featurizer)?;
    let opset = default_opset(&model)?;
    if opset < 13 {
        return Err(ModelError::AppModel(format!(
            "the featurizer uses opset {opset}; the app model needs 13 or later"
        )));
    }
    let ours: Vec<String> = std::iter::once(LABELS_PROPERTY.to_string())
        .chain(head.metadata.iter().map(|(k, _)| k.clone()))
        .collect();
    let mut out = Vec::with_capacity(featurizer.len() + 4 * (head.weights.len() + head.bias.len()) + 4096);
    let mut graphs = 0;
    for field in &model {
        match (field.number, &field.payload) {
            (MODEL_GRAPH, Some(graph)) => {
                graphs += 1;
                let graph = splice_graph(graph, Some(head))?;
                encode_bytes(MODEL_GRAPH, &graph, &mut out);
            }
            // A property of the featurizer's with a name verger sets is replaced.
            (MODEL_METADATA, Some(entry)) if ours.contains(&StringStringEntry::decode(*entry)?.key) => {}
            _ => out.extend_from_slice(field.raw),
        }
    }
    if graphs != 1 {
        return Err(ModelError::AppModel(format!(
            "the featurizer holds {graphs} graphs, not one"
        )));
    }
    let labels = serde_json::to_string(&head.labels).expect("strings serialize");
    for (key, value) in std::iter::once((LABELS_PROPERTY.to_string(), labels)).chain(head.metadata.iter().cloned()) {
        encode_message(MODEL_METADATA, &StringStringEntry { key, value }, &mut out);
    }
    Ok(out)
}

/// The featurizer with the scaling in front only: uint8 NHWC pixels in (input [`APP_INPUT`]), its features out
/// (output `features`), so that a GPU receives a quarter of the bytes and scales them itself.
pub fn with_pixel_input(featurizer: &[u8]) -> Result<Vec<u8>, ModelError> {
    let mut out = Vec::with_capacity(featurizer.len() + 4096);
    let mut graphs = 0;
    for field in fields(featurizer)? {
        match (field.number, field.payload) {
            (MODEL_GRAPH, Some(graph)) => {
                graphs += 1;
                encode_bytes(MODEL_GRAPH, &splice_graph(graph, None)?, &mut out);
            }
            _ => out.extend_from_slice(field.raw),
        }
    }
    if graphs != 1 {
        return Err(ModelError::AppModel(format!(
            "the featurizer holds {graphs} graphs, not one"
        )));
    }
    Ok(out)
}

/// The featurizer's graph with the scaling nodes first and its `input` no longer the graph's input; with a
/// head, `features` is no longer its output either: the head's nodes, weights and output follow.
fn splice_graph(graph: &[u8], head: Option<&Head>) -> Result<Vec<u8>, ModelError> {
    let features = crate::FEATURE_DIM;
    let head_len = head.map_or(0, |h| 4 * (h.weights.len() + h.bias.len()));
    let mut out = Vec::with_capacity(graph.len() + head_len + 4096);
    // Nodes must be in topological order: the scaling comes before every node of the featurizer.
    let scale = [
        node(
            "Cast",
            &[APP_INPUT],
            "verger/image_f32",
            vec![int_attribute("to", i64::from(DATA_FLOAT))],
        ),
        node(
            "Div",
            &["verger/image_f32", "verger/half_range"],
            "verger/halved",
            vec![],
        ),
        node("Sub", &["verger/halved", "verger/one"], FEATURIZER_INPUT, vec![]),
    ];
    for n in &scale {
        encode_message(GRAPH_NODE, n, &mut out);
    }
    let (mut had_input, mut had_output) = (false, false);
    for field in fields(graph)? {
        match (field.number, field.payload) {
            (GRAPH_INPUT, Some(value)) if ValueInfo::decode(value)?.name == FEATURIZER_INPUT => had_input = true,
            (GRAPH_OUTPUT, Some(value)) if ValueInfo::decode(value)?.name == FEATURIZER_OUTPUT => {
                had_output = true;
                if head.is_none() {
                    out.extend_from_slice(field.raw);
                }
            }
            (GRAPH_INPUT | GRAPH_OUTPUT, Some(value)) => {
                return Err(ModelError::AppModel(format!(
                    "the featurizer has another input or output ({:?}); verger expects only `{FEATURIZER_INPUT}` and `{FEATURIZER_OUTPUT}`",
                    ValueInfo::decode(value)?.name
                )))
            }
            _ => out.extend_from_slice(field.raw),
        }
    }
    if !had_input || !had_output {
        return Err(ModelError::AppModel(format!(
            "the featurizer's graph lacks input `{FEATURIZER_INPUT}` or output `{FEATURIZER_OUTPUT}`"
        )));
    }
    let mut initializers = vec![
        tensor("verger/half_range", &[], &[127.5]),
        tensor("verger/one", &[], &[1.0]),
    ];
    let image = value_info(APP_INPUT, DATA_UINT8, &[None, Some(224), Some(224), Some(3)]);
    let Some(head) = head else {
        for t in &initializers {
            encode_message(GRAPH_INITIALIZER, t, &mut out);
        }
        encode_message(GRAPH_INPUT, &image, &mut out);
        return Ok(out);
    };
    let mut x = FEATURIZER_OUTPUT.to_string();
    if let Some(center) = &head.center {
        initializers.push(tensor("verger/pca_mean", &[features], center));
        encode_message(
            GRAPH_NODE,
            &node("Sub", &[&x, "verger/pca_mean"], "verger/centred", vec![]),
            &mut out,
        );
        x = "verger/centred".into();
    }
    if let Some((components, k)) = &head.projection {
        initializers.push(tensor("verger/pca_components", &[features, *k], components));
        let n = node("MatMul", &[&x, "verger/pca_components"], "pca_features", vec![]);
        encode_message(GRAPH_NODE, &n, &mut out);
        x = "pca_features".into();
    }
    let (classes, dim) = (head.labels.len(), head.input_dim(features));
    initializers.push(tensor("verger/classifier_weights", &[classes, dim], &head.weights));
    initializers.push(tensor("verger/classifier_bias", &[classes], &head.bias));
    let gemm = node(
        "Gemm",
        &[&x, "verger/classifier_weights", "verger/classifier_bias"],
        "verger/logits",
        vec![int_attribute("transB", 1)],
    );
    encode_message(GRAPH_NODE, &gemm, &mut out);
    let softmax = node(
        "Softmax",
        &["verger/logits"],
        APP_OUTPUT,
        vec![int_attribute("axis", 1)],
    );
    encode_message(GRAPH_NODE, &softmax, &mut out);
    for t in &initializers {
        encode_message(GRAPH_INITIALIZER, t, &mut out);
    }
    encode_message(GRAPH_INPUT, &image, &mut out);
    let probabilities = value_info(APP_OUTPUT, DATA_FLOAT, &[None, Some(classes as i64)]);
    encode_message(GRAPH_OUTPUT, &probabilities, &mut out);
    Ok(out)
}

/// The version of the default (`ai.onnx`) operator set the model imports.
fn default_opset(model: &[Field<'_>]) -> Result<i64, ModelError> {
    for field in model {
        if let (MODEL_OPSET_IMPORT, Some(payload)) = (field.number, field.payload) {
            let opset = OperatorSetId::decode(payload)?;
            if opset.domain.is_empty() || opset.domain == "ai.onnx" {
                return Ok(opset.version);
            }
        }
    }
    Err(ModelError::AppModel(
        "the featurizer imports no ai.onnx operator set".into(),
    ))
}

/// One session over an app model: uint8 NHWC photos in, class probabilities out. For checking an exported
/// file and timing it.
pub struct AppSession {
    session: Session,
    classes: usize,
}

impl AppSession {
    pub fn new(bytes: &[u8], classes: usize) -> Result<Self, ModelError> {
        let session = Session::builder(runtime::environment(crate::Device::Cpu)?)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(1)?
            .with_intra_op_spinning(false)?
            .commit_from_memory(bytes)?;
        Ok(AppSession { session, classes })
    }

    /// Probabilities of `pixels.len() / (224·224·3)` photos, row-major `[n, classes]`.
    pub fn probabilities(&mut self, pixels: &[u8]) -> Result<Vec<f32>, ModelError> {
        let side = 224 * 224 * 3;
        if pixels.is_empty() || !pixels.len().is_multiple_of(side) {
            return Err(ModelError::InputShape { len: pixels.len() });
        }
        let n = pixels.len() / side;
        let tensor = TensorRef::from_array_view(([n, 224, 224, 3], pixels))?;
        let outputs = self.session.run(ort::inputs![APP_INPUT => tensor])?;
        let (shape, p) = outputs[APP_OUTPUT].try_extract_tensor::<f32>()?;
        if shape.num_elements() != n * self.classes {
            return Err(ModelError::Ort(format!("unexpected output shape {shape:?}")));
        }
        Ok(p.to_vec())
    }
}

// Field numbers of onnx.proto (ModelProto, GraphProto).
const MODEL_OPSET_IMPORT: u32 = 8;
pub(crate) const MODEL_GRAPH: u32 = 7;
const MODEL_METADATA: u32 = 14;
pub(crate) const GRAPH_NODE: u32 = 1;
pub(crate) const GRAPH_INITIALIZER: u32 = 5;
pub(crate) const GRAPH_INPUT: u32 = 11;
pub(crate) const GRAPH_OUTPUT: u32 = 12;
// TensorProto.DataType and AttributeProto.AttributeType values.
pub(crate) const DATA_FLOAT: i32 = 1;
const DATA_UINT8: i32 = 2;
const ATTRIBUTE_INT: i32 = 2;

/// One field of a message as it lies in the buffer: its number, its bytes (key included), and the payload of
/// a length-delimited field.
pub(crate) struct Field<'a> {
    pub(crate) number: u32,
    pub(crate) raw: &'a [u8],
    pub(crate) payload: Option<&'a [u8]>,
}

fn malformed(what: impl std::fmt::Display) -> ModelError {
    ModelError::AppModel(format!("the featurizer is not a well-formed ONNX file: {what}"))
}

/// The fields of the message `bytes`, in order.
pub(crate) fn fields(bytes: &[u8]) -> Result<Vec<Field<'_>>, ModelError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let start = bytes.len() - rest.len();
        let (number, wire) = decode_key(&mut rest).map_err(malformed)?;
        let payload = match wire {
            WireType::Varint => {
                decode_varint(&mut rest).map_err(malformed)?;
                None
            }
            WireType::SixtyFourBit => skip(&mut rest, 8)?,
            WireType::ThirtyTwoBit => skip(&mut rest, 4)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut rest).map_err(malformed)?).map_err(malformed)?;
                let payload = rest.get(..len).ok_or_else(|| malformed("a field runs past the end"))?;
                rest.advance(len);
                Some(payload)
            }
            WireType::StartGroup | WireType::EndGroup => return Err(malformed("groups are not used by ONNX")),
        };
        let end = bytes.len() - rest.len();
        out.push(Field {
            number,
            raw: &bytes[start..end],
            payload,
        });
    }
    Ok(out)
}

fn skip<'a>(rest: &mut &'a [u8], n: usize) -> Result<Option<&'a [u8]>, ModelError> {
    if rest.len() < n {
        return Err(malformed("a field runs past the end"));
    }
    rest.advance(n);
    Ok(None)
}

pub(crate) fn encode_bytes(number: u32, payload: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

pub(crate) fn encode_message(number: u32, message: &impl Message, out: &mut Vec<u8>) {
    encode_bytes(number, &message.encode_to_vec(), out);
}

fn node(op_type: &str, inputs: &[&str], output: &str, attribute: Vec<Attribute>) -> Node {
    Node {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: format!("verger/{op_type}/{output}"),
        op_type: op_type.to_string(),
        attribute,
    }
}

fn int_attribute(name: &str, value: i64) -> Attribute {
    Attribute {
        name: name.to_string(),
        r#type: ATTRIBUTE_INT,
        i: value,
    }
}

fn tensor(name: &str, dims: &[usize], values: &[f32]) -> Tensor {
    Tensor {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DATA_FLOAT,
        name: name.to_string(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// A tensor's name, element type and shape (`None`: a dynamic dimension, named `batch`).
fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfo {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            dim_value: *d,
            dim_param: d.is_none().then(|| "batch".to_string()),
        })
        .collect();
    ValueInfo {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorType {
                elem_type,
                shape: Some(Shape { dim }),
            }),
        }),
    }
}

// The subset of onnx.proto's messages verger writes (or reads a name from), with its field numbers.

#[derive(Clone, PartialEq, Message)]
struct Node {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<Attribute>,
}

#[derive(Clone, PartialEq, Message)]
struct Attribute {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "20")]
    r#type: i32,
    #[prost(int64, tag = "3")]
    i: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Tensor {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ValueInfo {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub(crate) tensor_type: Option<TensorType>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct TensorType {
    #[prost(int32, tag = "1")]
    pub(crate) elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub(crate) shape: Option<Shape>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Shape {
    #[prost(message, repeated, tag = "1")]
    pub(crate) dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub(crate) dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub(crate) dim_param: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct StringStringEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetId {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

impl From<prost::DecodeError> for ModelError {
    fn from(e: prost::DecodeError) -> Self {
        malformed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(labels: usize, k: usize) -> Head {
        Head {
            center: None,
            projection: Some((vec![0.5; crate::FEATURE_DIM * k], k)),
            weights: vec![0.25; labels * k],
            bias: vec![0.0; labels],
            labels: (0..labels).map(|i| format!("c{i}")).collect(),
            metadata: vec![("verger_note".into(), "x".into())],
        }
    }

    /// A tiny model in the featurizer's wire shape: opset, a graph with one node, input and output.
    fn tiny_featurizer() -> Vec<u8> {
        let mut graph = Vec::new();
        encode_message(
            GRAPH_NODE,
            &node("Identity", &["input"], "features", vec![]),
            &mut graph,
        );
        encode_message(GRAPH_INPUT, &value_info("input", DATA_FLOAT, &[None]), &mut graph);
        encode_message(GRAPH_OUTPUT, &value_info("features", DATA_FLOAT, &[None]), &mut graph);
        let mut model = Vec::new();
        encode_key(1, WireType::Varint, &mut model);
        encode_varint(7, &mut model);
        let opset = OperatorSetId {
            domain: String::new(),
            version: 13,
        };
        encode_message(MODEL_OPSET_IMPORT, &opset, &mut model);
        encode_bytes(MODEL_GRAPH, &graph, &mut model);
        let old = StringStringEntry {
            key: "labels".into(),
            value: "old".into(),
        };
        encode_message(MODEL_METADATA, &old, &mut model);
        model
    }

    #[test]
    fn the_splice_keeps_the_featurizer_and_swaps_input_and_output() {
        let built = build(&tiny_featurizer(), &head(3, 2)).unwrap();
        let model = fields(&built).unwrap();
        // ir_version kept as it was; one graph; the old `labels` replaced by ours.
        assert_eq!(model[0].raw, &[0x08, 7]);
        let metadata: Vec<StringStringEntry> = model
            .iter()
            .filter(|f| f.number == MODEL_METADATA)
            .map(|f| StringStringEntry::decode(f.payload.unwrap()).unwrap())
            .collect();
        assert_eq!(metadata.len(), 2);
        assert_eq!(metadata[0].key, "labels");
        assert_eq!(metadata[0].value, r#"["c0","c1","c2"]"#);
        let graph = model.iter().find(|f| f.number == MODEL_GRAPH).unwrap().payload.unwrap();
        let graph = fields(graph).unwrap();
        let named = |number| -> Vec<String> {
            graph
                .iter()
                .filter(|f| f.number == number)
                .map(|f| ValueInfo::decode(f.payload.unwrap()).unwrap().name)
                .collect()
        };
        assert_eq!(named(GRAPH_INPUT), vec![APP_INPUT]);
        assert_eq!(named(GRAPH_OUTPUT), vec![APP_OUTPUT]);
        let ops: Vec<String> = graph
            .iter()
            .filter(|f| f.number == GRAPH_NODE)
            .map(|f| Node::decode(f.payload.unwrap()).unwrap().op_type)
            .collect();
        assert_eq!(ops, ["Cast", "Div", "Sub", "Identity", "MatMul", "Gemm", "Softmax"]);
    }

    #[test]
    fn inconsistent_heads_and_models_are_refused() {
        let mut bad = head(3, 2);
        bad.bias.pop();
        assert!(matches!(build(&tiny_featurizer(), &bad), Err(ModelError::AppModel(_))));
        let mut one_class = head(1, 2);
        one_class.bias = vec![0.0];
        assert!(build(&tiny_featurizer(), &one_class).is_err());
        let truncated = &tiny_featurizer()[..20];
        let e = build(truncated, &head(3, 2)).unwrap_err().to_string();
        assert!(e.contains("not a well-formed ONNX file"), "{e}");
    }
}
