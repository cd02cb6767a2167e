"""Images: bake a tree into the content-addressed store, and everything that reads it back.

bake, store, objects, ignore, tree and stepcache make an image; materialize writes one
out for an instance; drift compares a running copy with its manifest; prune and repair
keep the store lean and sound. Submodules are imported on demand, so a command that
only needs one of them pays for no more.
"""
