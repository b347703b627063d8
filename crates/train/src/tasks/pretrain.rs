//! Pretraining as a `Task`: next-token prediction on windows of raw text.

use burn::tensor::Tensor;
use kernels::Backend;
use model::Gpt;
use model::gpt::int_tensor;

use data::Tokenizer;
use data::facts::FactPrompt;

use crate::task::Task;
use crate::tasks::eval::fact_accuracy;

/// Next-token prediction on sliding windows of a token stream.
pub struct PretrainTask {
    pub train: data::WindowDataset,
    pub val: data::WindowDataset,
    /// Fact completions scored at each evaluation as `fact_accuracy` (none: not scored).
    pub facts: Vec<FactPrompt>,
    pub tokenizer: Tokenizer,
}

impl Task for PretrainTask {
    type Batch = data::TokenBatch;

    fn train_len(&self) -> usize {
        self.train.len()
    }
    fn train_batch(&self, indices: &[usize]) -> Self::Batch {
        self.train.batch(indices)
    }
    fn val_len(&self) -> usize {
        self.val.len()
    }
    fn val_batch(&self, indices: &[usize]) -> Self::Batch {
        self.val.batch(indices)
    }
    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.inputs.len()
    }
    fn loss<B: Backend>(&self, model: &Gpt<B>, batch: &Self::Batch, device: &B::Device) -> Tensor<B, 1> {
        let inputs = int_tensor::<B>(&batch.inputs, batch.batch_size, batch.seq_len, device);
        let targets = int_tensor::<B>(&batch.targets, batch.batch_size, batch.seq_len, device);
        model.loss(inputs, targets)
    }
    fn evaluate<B: Backend>(&self, model: &Gpt<B>, _device: &B::Device) -> Vec<(String, f64)> {
        match self.facts.is_empty() {
            true => Vec::new(),
            false => vec![("fact_accuracy".into(), fact_accuracy(model, &self.tokenizer, &self.facts))],
        }
    }
}
