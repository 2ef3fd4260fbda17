"""The Knowledge service: documents, chunks, vectors and the keyword index; hybrid search with
citations."""
