"""Late Prompt Tuning (Liu et al., 2022): a prompt inserted at an intermediate layer.

The frozen PLM runs its embeddings and layers ``0 .. k-1`` **without autograd**
(``torch.no_grad``: no graph, no stored activations below layer ``k``). A small trainable
generator turns the hidden states at layer ``k`` into ``L`` prompt vectors, which are
prepended to the hidden sequence (the attention mask is extended by ``L`` ones); layers
``k ..`` and the verbalizer then run as usual, reading the mask position shifted by ``L``.

Generators (``d`` hidden size, ``r`` bottleneck):

* ``naive``: one learned static late prompt ``[L, d]``, the same for every instance;
* ``npg``: the first real token's hidden state -> Linear(d, r) -> ReLU -> Linear(r, L·d);
* ``appg`` / ``mppg``: token-wise Linear(d, r) -> adaptive average / max pooling over the
  real (non-pad) tokens to ``L`` positions -> ReLU -> Linear(r, d).

Generators read only real tokens, so padding (side and amount) does not change the prompt.
For T5 the insertion happens in the encoder stack (the relative position bias is recomputed
for the longer sequence, prompt first, as in input prompt tuning); the decoder is unchanged.

Files: ``config`` (settings), ``model`` (generators and the late-prompt model), ``steps`` (profile,
train, test one method: what rules call), ``report`` (table and figure). Planning: ``workflow/planning/lpt.py``.
"""
