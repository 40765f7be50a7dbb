{
  "targets": [
    {
      "target_name": "medic_native",
      "sources": ["page_cache.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
