//! `GptConfig`: every number that decides the shape of the model, and
//! `ComputeConfig`: the switches that decide only how fast it computes.
//!
//! The presets are named after what they imitate. Any field can be changed
//! afterwards with the generated `with_*` setters, e.g.
//! `GptConfig::tiny(4096).with_n_layers(2)`.

use burn::config::Config;

use crate::precision::Precision;

/// The shape of a GPT-2-style decoder.
#[derive(Config, Debug, PartialEq)]
pub struct GptConfig {
    /// Number of distinct tokens. No default: it must equal the tokenizer's
    /// vocabulary, so it is always read from the tokenizer (or given).
    pub vocab_size: usize,
    /// Longest sequence the model can see. GPT-2 used 1024; the learned position
    /// table has one row per position, so this also sizes that table.
    #[config(default = 1024)]
    pub context_length: usize,
    /// Width of the residual stream. 768 is GPT-2 small.
    #[config(default = 768)]
    pub d_model: usize,
    /// Attention heads per layer; `d_model` must divide evenly by it.
    /// 12 heads of 64 dimensions is GPT-2 small.
    #[config(default = 12)]
    pub n_heads: usize,
    /// Number of transformer blocks. 12 is GPT-2 small.
    #[config(default = 12)]
    pub n_layers: usize,
    /// Dropout probability on embeddings, attention weights and residual
    /// branches. GPT-2 trained with 0.1; fine-tuning small data often wants 0.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Whether the query/key/value projection has a bias. GPT-2 has one; many
    /// later models drop it. Kept on so the parameter count matches GPT-2.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// Share the token-embedding matrix with the output head (GPT-2 does).
    /// Saves `vocab_size * d_model` parameters: 38.6M of GPT-2 small's 163M.
    #[config(default = true)]
    pub tie_embeddings: bool,
    /// LayerNorm epsilon: PyTorch's and GPT-2's default.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl GptConfig {
    /// GPT-2 small: 124.4M parameters with tied embeddings.
    pub fn gpt2_124m() -> Self {
        Self::new(50257)
    }

    /// MiniMind-sized: its width, depth and context (MiniMind itself has 26M
    /// parameters with a SwiGLU MLP; this GPT-2-style one has 28.8M with a
    /// 6400-token vocabulary).
    pub fn mini(vocab_size: usize) -> Self {
        Self::new(vocab_size).with_context_length(512).with_d_model(512).with_n_heads(8).with_n_layers(8)
    }

    /// Small enough that a 2-core CPU shows learning within minutes
    /// (1.3M parameters with a 4096-token vocabulary). No dropout: on the
    /// shipped corpus its job is to store every fact it reads, over several
    /// epochs, and dropout fights exactly that; its learning curves show no
    /// over-fitting for dropout to prevent (the run report says so).
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size)
            .with_context_length(128)
            .with_d_model(128)
            .with_n_heads(4)
            .with_n_layers(4)
            .with_dropout(0.0)
    }

    /// The preset named on the command line (`tiny`, `mini`, `gpt2-124m`).
    /// The GPT-2 preset keeps its own vocabulary only when `vocab_size` is None.
    pub fn preset(name: &str, vocab_size: Option<usize>) -> Result<Self, String> {
        let vocab = vocab_size.unwrap_or(50257);
        match name {
            "tiny" => Ok(Self::tiny(vocab)),
            "mini" => Ok(Self::mini(vocab)),
            "gpt2-124m" | "gpt2_124m" => Ok(Self { vocab_size: vocab, ..Self::gpt2_124m() }),
            other => Err(format!("unknown preset `{other}`: expected one of tiny, mini, gpt2-124m")),
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Checks the shape makes sense before anything is allocated.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size == 0 || self.context_length == 0 || self.n_layers == 0 || self.d_model == 0 {
            return Err("vocab_size, context_length, d_model and n_layers must be positive".into());
        }
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(format!("d_model ({}) must be a multiple of n_heads ({})", self.d_model, self.n_heads));
        }
        // Far beyond any model trained today, and small enough that the
        // parameter count cannot overflow.
        let limits = [
            ("vocab_size", self.vocab_size, 1 << 20),
            ("context_length", self.context_length, 1 << 20),
            ("d_model", self.d_model, 1 << 16),
            ("n_layers", self.n_layers, 1 << 10),
        ];
        if let Some((name, value, max)) = limits.into_iter().find(|(_, value, max)| value > max) {
            return Err(format!("{name} {value} is beyond this project's limit of {max}"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// The first field, if any, in which `other` describes differently
    /// shaped weights (so that one model's checkpoint cannot load into the
    /// other), as "name: self vs other". Dropout and the LayerNorm epsilon
    /// change what the model computes, not the weights it has.
    pub fn shape_difference(&self, other: &GptConfig) -> Option<String> {
        let field = |name: &'static str, a: &dyn ToString, b: &dyn ToString| (name, a.to_string(), b.to_string());
        let fields = [
            field("vocab_size", &self.vocab_size, &other.vocab_size),
            field("context_length", &self.context_length, &other.context_length),
            field("d_model", &self.d_model, &other.d_model),
            field("n_heads", &self.n_heads, &other.n_heads),
            field("n_layers", &self.n_layers, &other.n_layers),
            field("qkv_bias", &self.qkv_bias, &other.qkv_bias),
            field("tie_embeddings", &self.tie_embeddings, &other.tie_embeddings),
        ];
        fields.into_iter().find(|(_, a, b)| a != b).map(|(name, a, b)| format!("{name}: {a} vs {b}"))
    }

    /// Parameter count computed from the shapes alone, so the 124M model can
    /// be sized without allocating it. A test checks it against a real model.
    pub fn num_params(&self) -> usize {
        let (v, c, d) = (self.vocab_size, self.context_length, self.d_model);
        let layer_norm = 2 * d; // gamma + beta
        let qkv = d * 3 * d + if self.qkv_bias { 3 * d } else { 0 };
        let attn_out = d * d + d;
        let mlp = (d * 4 * d + 4 * d) + (4 * d * d + d);
        let block = layer_norm + qkv + attn_out + layer_norm + mlp;
        let embeddings = v * d + c * d;
        let head = if self.tie_embeddings { 0 } else { v * d };
        embeddings + self.n_layers * block + layer_norm + head
    }
}

/// How the model computes, as opposed to what: switches that change speed
/// and rounding (the last digits, or, for `precision`, all of them past
/// the third), never the weights. Kept apart from
/// [`GptConfig`] so that flipping one never makes a checkpoint look like
/// another model.
#[derive(Config, Debug, PartialEq)]
pub struct ComputeConfig {
    /// Attention through the fused kernel (`kernels::causal_attention`)
    /// rather than the written-out softmax(QKᵀ/√d)·V of
    /// `MultiHeadAttention::plain_attention`. Same result (tested) and
    /// faster, so on by default; the price is that the kernel applies no
    /// dropout to the attention weights. Generation with a KV cache always
    /// takes the written-out path: the kernel expects as many keys as queries.
    #[config(default = true)]
    pub fused_attention: bool,
    /// The precision of the products (`--dtype`; see `model::precision`).
    /// f32 by default: every backend has it, and it is the reference the
    /// 16-bit runs are compared with. The weights stay f32 either way.
    #[config(default = "Precision::F32")]
    pub precision: Precision,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_124m_parameters() {
        let cfg = GptConfig::gpt2_124m();
        assert_eq!(cfg.num_params(), 124_439_808); // "124.4M"
        let untied = cfg.with_tie_embeddings(false);
        assert_eq!(untied.num_params(), 163_037_184); // "163.0M"
    }

    #[test]
    fn presets_are_valid_and_sized_as_documented() {
        for name in ["tiny", "mini", "gpt2-124m"] {
            GptConfig::preset(name, Some(4096)).unwrap().validate().unwrap();
        }
        let tiny = GptConfig::tiny(4096).num_params();
        assert!((1_200_000..1_400_000).contains(&tiny), "tiny has {tiny}");
        let mini = GptConfig::mini(6400).num_params();
        assert!((28_000_000..29_500_000).contains(&mini), "mini has {mini}");
        assert!(GptConfig::preset("huge", None).is_err());
        assert!(GptConfig::tiny(100).with_n_heads(3).validate().is_err());
    }

    #[test]
    fn shape_difference_names_the_field_and_ignores_dropout() {
        let tiny = GptConfig::tiny(4096);
        assert_eq!(tiny.shape_difference(&tiny.clone().with_dropout(0.0)), None);
        assert_eq!(tiny.shape_difference(&tiny.clone().with_d_model(64)).as_deref(), Some("d_model: 128 vs 64"));
        let untied = tiny.clone().with_tie_embeddings(false);
        assert_eq!(tiny.shape_difference(&untied).as_deref(), Some("tie_embeddings: true vs false"));
    }
}
