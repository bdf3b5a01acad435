use std::time::Instant;
use regex_automata::Input;
use veilgate_core::mask::candidates::{build, Kind};
fn main() {
    let re = build(&Kind::ALL);
    for n in [1000usize, 4000, 16000] {
        let v = "1.".repeat(n);
        let t = Instant::now();
        let mut at = 0; let mut c = 0;
        while let Some(mm) = re.search(&Input::new(v.as_bytes()).range(at..)) { at = mm.start()+1; c+=1; }
        println!("range: n={n} searches {c} {:?}", t.elapsed());
        let t = Instant::now();
        let mut at = 0; let mut c = 0;
        while let Some(mm) = re.search(&Input::new(&v.as_bytes()[at..])) { at += mm.start()+1; c+=1; }
        println!("slice: n={n} searches {c} {:?}", t.elapsed());
        let t = Instant::now();
        let mut at = 0; let mut c = 0;
        while let Some(mm) = re.search(&Input::new(v.as_bytes()).range(at..).earliest(false)) { at = mm.start()+1; c+=1; if c > 3 {break} }
        println!("first 4: {:?}", t.elapsed());
    }
}
