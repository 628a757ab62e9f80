"""Stage 4, PCA over the features table:

- ``model``: the linear algebra, numpy only (``PcaModel``, ``Fit``, ``solve``, ``update``);
- ``stats``: the sufficient statistics, read with Arrow and delta-rs, stored in ``pca_stats``;
- ``registry``: every PCA version in ``pca_models``, read one at a time, and projection onto one;
- ``refit``: the Spark job that fits, stores and plots (``refit``, ``run_periodically``);
- ``plots``: the scree and PC1/PC2 plots (matplotlib, imported only by the refit).
"""
