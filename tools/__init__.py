"""Developer tools, apart from the product: bench, testbed, launcher (up), scenario runner, replay, certificates, netns, traces."""
