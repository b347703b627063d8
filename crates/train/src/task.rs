//! What a stage plugs into the shared loop: its batches and its loss. The
//! stages' own tasks are in `tasks/`.

use burn::tensor::Tensor;
use kernels::Backend;
use model::Gpt;

/// A training task. Pretraining, SFT and DPO each implement this; the loop
/// in `trainer.rs` is the same for all of them.
pub trait Task {
    /// One batch as plain host data (ids, masks), turned into tensors by `loss`.
    type Batch;

    /// Number of training examples (windows, conversations, pairs).
    fn train_len(&self) -> usize;
    /// Builds the training batch holding examples `indices`.
    fn train_batch(&self, indices: &[usize]) -> Self::Batch;
    /// Number of validation examples.
    fn val_len(&self) -> usize;
    fn val_batch(&self, indices: &[usize]) -> Self::Batch;
    /// Tokens in a batch (for tokens/s).
    fn tokens(&self, batch: &Self::Batch) -> usize;

    /// Mean loss of the batch, `[1]`. Generic over the backend so the same
    /// code computes the training loss (autodiff backend, dropout on) and the
    /// validation loss (inner backend, no graph, dropout off).
    fn loss<B: Backend>(&self, model: &Gpt<B>, batch: &Self::Batch, device: &B::Device) -> Tensor<B, 1>;

    /// The loss plus named numbers to log beside it at log steps (each a
    /// `[1]` mean over the batch, e.g. DPO's reward accuracy). Tasks without
    /// such numbers keep this default.
    fn loss_and_metrics<B: Backend>(
        &self,
        model: &Gpt<B>,
        batch: &Self::Batch,
        device: &B::Device,
    ) -> (Tensor<B, 1>, Vec<(&'static str, Tensor<B, 1>)>) {
        (self.loss(model, batch, device), Vec::new())
    }

    /// Extra numbers measured at each evaluation (e.g. answer accuracy),
    /// logged beside the validation loss. None by default.
    fn evaluate<B: Backend>(&self, _model: &Gpt<B>, _device: &B::Device) -> Vec<(String, f64)> {
        Vec::new()
    }
}
