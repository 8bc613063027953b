// Build settings for the bundler behind `jco componentize --bundle`: Tessera's own
// interfaces (tessera:sql, tessera:messaging) are component imports, not files to bundle.
export default { external: [/^tessera:/] };
