"""Wire contract shared by the gateway and the cloud bridge."""
