"""The network: frozen backbone, patch autoencoder, score terms (pure nn.Modules; settings in
inspector.config.network)."""
