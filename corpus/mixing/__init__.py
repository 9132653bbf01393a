"""From a corpus to training sequences: which source the next sequence comes from, by tokens
(`schedule`); the sources and weights being mixed (`sources`); each source's chunks as a
seeded, never-materialised stream (`chunk_streams`, over `permutation`); chunks cut into
sequences (`packing`); the resumable, shardable `MixtureSampler` that ties them (`sampler`); and a
corpus as pretraining reads it, built or live (`corpus_source`).
"""
