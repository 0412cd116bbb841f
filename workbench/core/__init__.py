"""The pure core: contract, schemas, pseudonyms, participant JSON, error table.

Nothing here imports docker, stomp, sockets, IPython or ipywidgets; a test checks that.
"""
