//! `Value` and `Array` of the user's own structs through `bytemuck`'s
//! derives: no `unsafe impl` anywhere, and the child's writes are seen here.

use bytemuck::{Pod, Zeroable};
use multiproc::{Array, Process, Value};

use crate::ipc_util::{join_ok, start_daemon};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
struct Particle {
    pos: [f32; 3],
    mass: f32,
    id: u64,
}

/// Derived through the re-export, for a crate that does not name bytemuck.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, multiproc::bytemuck::Pod, multiproc::bytemuck::Zeroable,
)]
#[bytemuck(crate = "multiproc::bytemuck")]
struct Pair {
    a: u32,
    b: i32,
}

fn step((v, arr, pair): (Value<Particle>, Array<Particle>, Value<Pair>)) {
    {
        let mut g = v.lock().unwrap();
        g.pos[0] += 1.5;
        g.id = 99;
    }
    let mut g = arr.lock().unwrap();
    for (i, p) in g.iter_mut().enumerate() {
        p.mass = i as f32 * 2.0;
        p.id = 1000 + i as u64;
    }
    drop(g);
    pair.set(Pair { a: u32::MAX, b: -3 });
}

#[test]
fn derived_pod_structs_are_shared_with_a_child() {
    let start = Particle { pos: [1.0, 2.0, 3.0], mass: 4.0, id: 1 };
    let v = Value::new(start).unwrap();
    let arr = Array::from_slice(&[Particle::zeroed(); 4]).unwrap();
    let pair = Value::new_raw(Pair { a: 0, b: 0 }).unwrap();
    let mut p = start_daemon(Process::new(step, (v.clone(), arr.clone(), pair.clone())));
    join_ok(&mut p);
    assert_eq!(v.get(), Particle { pos: [2.5, 2.0, 3.0], mass: 4.0, id: 99 });
    let got = arr.to_vec();
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.mass, i as f32 * 2.0);
        assert_eq!(p.id, 1000 + i as u64);
        assert_eq!(p.pos, [0.0; 3]);
    }
    assert_eq!(pair.get(), Pair { a: u32::MAX, b: -3 });
}

/// A struct that nests derived structs and arrays is plain data too.
#[test]
fn nested_pod_structs_round_trip_in_place() {
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    struct Cloud {
        parts: [Particle; 2],
        count: u64,
    }
    let c = Cloud { parts: [Particle { pos: [0.5; 3], mass: 1.0, id: 7 }; 2], count: 2 };
    let v = Value::new(Cloud::zeroed()).unwrap();
    v.set(c);
    assert_eq!(v.get(), c);
}
