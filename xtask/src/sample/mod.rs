//! The bundled sample tree: its kbuild-like description (`kbuild`, `tree`),
//! the generator of large trees (`gen`), the front end that compiles it
//! (`fe`) and the make reference flow run on it (`reference`).

pub mod fe;
pub mod gen;
pub mod kbuild;
pub mod reference;
pub mod tree;
