import { defineConfig } from "vite";

// Served by the gateway under /console/ (same origin as the API: no CORS, cookies unused).
export default defineConfig({
  base: "/console/",
  // Fixed file names: the build is committed and the gateway serves exactly these files
  // (scripts/gateway.py CONSOLE_FILES); tests/contract checks it is current.
  build: {
    outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 2000,
    rollupOptions: { output: { entryFileNames: "assets/console.js", chunkFileNames: "assets/[name].js",
      assetFileNames: "assets/console[extname]" } },
  },
  server: { proxy: { "/aimesh.": "http://127.0.0.1:8080", "/v1": "http://127.0.0.1:8080" } },
});
