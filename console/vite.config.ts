import { defineConfig } from "vite";

// Served by the gateway under /console/ (same origin as the API: no CORS, cookies unused).
export default defineConfig({
  base: "/console/",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 2000 },
  server: { proxy: { "/aimesh.": "http://127.0.0.1:8080", "/v1": "http://127.0.0.1:8080" } },
});
