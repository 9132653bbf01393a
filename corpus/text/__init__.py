"""Per-document text steps, in the order a build applies them: read records from upstream files
(`readers`), normalise and split into 2048-word chunks with CoreNet's length rules (`rules`),
then the extra datatrove filters a source declares (`filters`). Each step says why it drops
what it drops, so every record read is accounted for.
"""
