"""Compiled kernels (``@njit`` only), one module per strategy family.

Nothing here validates arguments or chooses a strategy: :mod:`fastconv.plan` does, and
:mod:`fastconv.functional` is the public API. Kernel names are ``<family>_<computation>``
(plus the register tile where a family has several), never the name of a public function.

=================  ==========================================================================
module             kernels
=================  ==========================================================================
``pack``           ``pack_nhwc_padded``, ``pack_nchw_padded``, ``pack_scatter_phase``,
                   ``pack_vector_weights``
``vector``         ``vector_forward``, ``vector_weight_grad`` (tiles in ``vector_tiles``, types in ``simd``)
``tiled``          ``tiled_forward_4x4``, ``tiled_weight_grad_by_rows``, ``tiled_weight_grad_by_filters``
``flat``           ``flat_forward``, ``flat_weight_grad``, ``flat_bias_grad``
``filter_vector``  ``filter_vector_forward``
``depthwise``      ``depthwise_pack``, ``depthwise_forward``, ``depthwise_input_grad``, ``depthwise_weight_grad``,
                   ``depthwise_rows_forward``, ``depthwise_rows_input_grad``, ``depthwise_rows_weight_grad``,
                   ``depthwise_flat_forward``, ``depthwise_flat_weight_grad``
``grouped``        ``grouped_input_grad`` (groups, dilation: strided, or a gather)
``phases``         ``phases_weights``, ``phases_input_grad`` (the strided input gradient, every stride phase in one launch)
``matmul``         ``matmul_nn``, ``matmul_nt``
``maxpool``        ``maxpool_forward_2x2``, ``maxpool_forward_window``, ``maxpool_forward_columns``,
                   ``maxpool_forward_ranges``,
                   ``maxpool_backward_route``
``avgpool``        ``avgpool_forward_ranges``, ``avgpool_backward_ranges``, ``avgpool_forward_global``,
                   ``avgpool_backward_global``
``elementwise``    ``elementwise_relu``, ``elementwise_relu_grad``
``norm``           ``norm_moments``, ``norm_affine``, ``norm_affine_stream``, ``norm_grad_sums``,
                   ``norm_grad_apply``, ``norm_fused_forward``, ``norm_fused_backward``,
                   ``norm_fused_backward_stream``
``activation``     ``activation_pointwise``, ``activation_pointwise_grad`` (a loop per scalar function),
                   ``activation_softmax_rows``, ``activation_softmax_columns`` and their ``*_grad``:
                   ``activation_softmax_rows_grad``, ``activation_softmax_columns_grad``
=================  ==========================================================================
"""
