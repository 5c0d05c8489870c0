//! The default `rill` binary: the command line with the example catalogue.

fn main() {
    rill::main(rill_examples::catalog());
}
