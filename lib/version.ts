/** Version of flowexporter, carried in every batch and shown by `--version`. */
export const VERSION = "0.1.0";
