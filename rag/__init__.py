"""rag: retrieval-augmented generation and agent loops on top of the engine API (week 3 of the course).

Rules: talks to the engine only through `Engine.submit()` event streams; the vector store is ChromaDB,
the embedder a MiniLM encoder run in MLX. Nothing here touches MLX arrays of the engine thread.
"""
