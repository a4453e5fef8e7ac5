"""Images and data sets: reading with limits, preprocessing to the network input, data sets on disk, synthetic parts."""
